"""The indexing graph: ingest files into the knowledge store, as a LangGraph graph for Studio.

One node calls the same core as `ragtune ingest` (`ragtune.tools.ingest.ingest_paths`), into the
collection named by the run's `Context`. Its output is the ingest summary.
"""

from __future__ import annotations

from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from ragtune.agents.context import Context
from ragtune.graphs.nodes import context_of


class IndexInput(TypedDict, total=False):
    """What to ingest."""

    paths: list[str]
    """Files or folders (.txt .md .pdf .html, JSONL, HotpotQA or MuSiQue files)."""
    format: str
    """auto, text, jsonl, hotpotqa or musique."""


class IndexOutput(TypedDict, total=False):
    """What the ingest did."""

    summary: dict[str, Any]


class IndexState(IndexInput, IndexOutput):
    """Input and output together."""


def ingest(state: IndexState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Ingest `paths` into the context's collection (created when missing)."""
    from ragtune.tools.database import shared_database
    from ragtune.tools.embeddings import load_embeddings
    from ragtune.tools.ingest import ingest_paths
    from ragtune.tools.store import KnowledgeStore

    ctx = context_of(runtime)
    store = KnowledgeStore(shared_database(), load_embeddings(), ctx.collection)
    summary = ingest_paths(store, state.get("paths", []),
                           fmt=state.get("format", "auto"))
    return {"summary": summary.to_json()}


def build_indexing_graph() -> Any:
    """Compile the indexing graph."""
    builder = StateGraph(IndexState, context_schema=Context, input_schema=IndexInput,
                         output_schema=IndexOutput)
    builder.add_node("ingest", ingest)
    builder.add_edge(START, "ingest")
    builder.add_edge("ingest", END)
    return builder.compile(name="ragtune-indexing")


graph = build_indexing_graph()
