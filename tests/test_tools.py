"""The LangChain tool faces, alone and inside `langchain.agents.create_agent`.

The agent's model is a scripted tool-calling fake (a `GenericFakeChatModel` whose `bind_tools` is a
no-op); the tools run for real: retrieval against the embedded Postgres store, decomposition and
the specialist against `FakeListChatModel`s.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage, ToolMessage

from ragtune.tools.agent_tools import make_tools
from ragtune.tools.store import KnowledgeStore


class ScriptedToolModel(GenericFakeChatModel):
    """Replays scripted AI messages (tool calls included); binding tools changes nothing."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return self


def _store(fake_store: KnowledgeStore) -> KnowledgeStore:
    fake_store.add_texts(["Ada Lovelace was born in London.", "The Thames flows through London."],
                         [{"source": "ada", "title": "Ada Lovelace"},
                          {"source": "thames", "title": "River Thames"}])
    return fake_store


def test_tool_schemas_hide_plumbing(fake_store: KnowledgeStore) -> None:
    tools = make_tools(fake_store, FakeListChatModel(responses=["x"]))
    assert [t.name for t in tools] == ["retrieve_documents", "decompose_question",
                                       "ask_specialist"]
    for t in tools:
        props = t.args_schema.model_json_schema()["properties"]  # type: ignore[union-attr]
        assert len(props) == 1, props  # only the model-facing argument
        assert t.description and len(t.description) > 60


def test_tools_return_content_and_artifacts(fake_store: KnowledgeStore) -> None:
    store = _store(fake_store)
    retrieve, decompose, specialist = make_tools(
        store, FakeListChatModel(responses=["1. Where was Ada born?\n2. What flows through #1?"]),
        FakeListChatModel(responses=["Au"]), k=2, mode="text")
    call = {"name": "retrieve_documents", "args": {"query": "Ada Lovelace"}, "id": "1",
            "type": "tool_call"}
    message = retrieve.invoke(call)
    assert isinstance(message, ToolMessage)
    assert "<context>" in message.content and "Ada Lovelace" in message.content
    assert message.artifact[0].metadata["title"] == "Ada Lovelace"
    message = decompose.invoke({**call, "name": "decompose_question",
                                "args": {"question": "Which river ... Ada?"}})
    assert message.artifact == ["Where was Ada born?", "What flows through #1?"]
    message = specialist.invoke({**call, "name": "ask_specialist",
                                 "args": {"question": "Symbol of gold?"}})
    assert message.content == "Au"
    empty = retrieve.invoke({**call, "args": {"query": "   "}})
    assert "Search failed" in empty.content  # an error becomes a message at the boundary


def test_create_agent_uses_all_three_tools(fake_store: KnowledgeStore) -> None:
    from langchain.agents import create_agent

    store = _store(fake_store)
    script = iter([
        AIMessage(content="", tool_calls=[{"name": "decompose_question", "id": "c1",
                                           "args": {"question": "Which river flows through "
                                                    "Ada Lovelace's birthplace?"}}]),
        AIMessage(content="", tool_calls=[{"name": "retrieve_documents", "id": "c2",
                                           "args": {"query": "Ada Lovelace born"}}]),
        AIMessage(content="", tool_calls=[{"name": "ask_specialist", "id": "c3",
                                           "args": {"question": "Which river flows through "
                                                    "London?"}}]),
        AIMessage(content="The River Thames."),
    ])
    agent = create_agent(ScriptedToolModel(messages=script),
                         make_tools(store, FakeListChatModel(responses=[
                             "1. Where was Ada Lovelace born?\n2. Which river flows through #1?"]),
                             FakeListChatModel(responses=["River Thames"])))
    result = agent.invoke({"messages": [("user", "Which river flows through the city where "
                                                 "Ada Lovelace was born?")]})
    tool_messages = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert [m.name for m in tool_messages] == ["decompose_question", "retrieve_documents",
                                               "ask_specialist"]
    assert "#1" in tool_messages[0].content
    assert "Ada Lovelace" in tool_messages[1].content
    assert tool_messages[2].content == "River Thames"
    assert result["messages"][-1].content == "The River Thames."
