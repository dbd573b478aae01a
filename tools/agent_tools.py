"""The LangChain tool faces of ragtune's capabilities, for any LangChain or LangGraph agent.

`make_tools(...)` returns three tools bound to a store and models: `retrieve_documents`,
`decompose_question` and `ask_specialist`. Their docstrings are their contracts (what the calling
model reads); plumbing (the store, the models, k) is bound here and hidden from the model. Each
returns text for the model plus an artifact (the documents, the sub-question list, the raw answer),
and turns ragtune's own errors into a message at this boundary instead of raising.

The orchestrator's nodes call the same core functions: `ragtune.tools.distinct.retrieve_sources`
(k distinct sources, not k chunks), `ragtune.agents.decomposer.decompose_question` and
`ragtune.agents.specialist.ask_specialist`.
"""

from __future__ import annotations

from typing import Any

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool, tool

from ragtune.agents.answerer import format_context
from ragtune.agents.decomposer import decompose_question as decompose_core
from ragtune.agents.specialist import ask_specialist as specialist_core
from ragtune.errors import RagtuneError
from ragtune.tools.distinct import retrieve_sources
from ragtune.tools.store import KnowledgeStore, SearchMode


def make_retrieve_tool(store: KnowledgeStore, *, k: int = 5,
                       mode: SearchMode = "hybrid") -> BaseTool:
    """Return the `retrieve_documents` tool over `store`."""

    @tool(response_format="content_and_artifact", parse_docstring=True)
    def retrieve_documents(query: str) -> tuple[str, list[Document]]:
        """Search the knowledge base and return the most relevant paragraphs, numbered [1], [2], ...

        Use it for facts that may change or that you do not know. Ask one focused question or
        give key terms (names, dates, places); for a multi-part question, search each part.

        Args:
            query: What to look up, in natural language or as key terms.
        """
        try:
            docs = [hit.to_document() for hit in retrieve_sources(store, query, k, mode=mode)]
        except RagtuneError as exc:
            return f"Search failed: {exc}", []
        if not docs:
            return "No paragraphs found.", []
        return f"<context>\n{format_context(docs)}\n</context>", docs

    return retrieve_documents


def make_decompose_tool(model: BaseChatModel, *, max_hops: int = 4) -> BaseTool:
    """Return the `decompose_question` tool using `model`."""

    @tool(response_format="content_and_artifact", parse_docstring=True)
    def decompose_question(question: str) -> tuple[str, list[str]]:
        """Split a multi-hop question into simpler sub-questions, one per line, in order.

        A later sub-question may refer to an earlier one's answer as #1, #2, ...: answer them in
        order and substitute those answers before asking the next.

        Args:
            question: The complex question (a comparison or a chain of facts).
        """
        try:
            result = decompose_core(question, model, max_hops=max_hops)
        except RagtuneError as exc:
            return f"Decomposition failed: {exc}", []
        lines = "\n".join(f"{i}. {q}" for i, q in enumerate(result.sub_questions, 1))
        return lines, result.sub_questions

    return decompose_question


def make_specialist_tool(model: BaseChatModel) -> BaseTool:
    """Return the `ask_specialist` tool using the specialist `model`."""

    @tool(response_format="content_and_artifact", parse_docstring=True)
    def ask_specialist(question: str) -> tuple[str, dict[str, Any]]:
        """Ask the fine-tuned domain specialist model a question; it answers without searching.

        Use it for stable domain knowledge and reasoning it was trained on, not for facts that
        change (search those).

        Args:
            question: One self-contained question.
        """
        try:
            reply = specialist_core(question, model)
        except RagtuneError as exc:
            return f"Specialist failed: {exc}", {}
        return reply.text or "(no answer)", {"raw": reply.raw, "usage": reply.usage}

    return ask_specialist


def make_tools(store: KnowledgeStore, chat_model: BaseChatModel,
               specialist_model: BaseChatModel | None = None, *, k: int = 5,
               mode: SearchMode = "hybrid") -> list[BaseTool]:
    """Return the three tools: retrieval over `store`, decomposition and the specialist."""
    return [make_retrieve_tool(store, k=k, mode=mode), make_decompose_tool(chat_model),
            make_specialist_tool(specialist_model or chat_model)]
