"""LangChain's standard tool suites, run against each tool that `make_tools` returns.

The tools run for real: `retrieve_documents` searches a uuid-named collection on the session's
database (real embedder), `decompose_question` and `ask_specialist` call langchain-core's
`FakeListChatModel`s through ragtune's own decomposer and specialist code.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool
from langchain_tests.integration_tests import ToolsIntegrationTests
from langchain_tests.unit_tests import ToolsUnitTests

from ragtune.tools.agent_tools import make_tools
from ragtune.tools.store import KnowledgeStore

# The suite's async tests are unmarked coroutines (its own packages run pytest-asyncio in auto
# mode); mark the module, and silence the plugin's note that this marks the sync tests too.
pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:The test <Function .* is marked with '@pytest.mark.asyncio"),
]

PLAN = "1. Where was Ada Lovelace born?\n2. Which river flows through #1?"
EXAMPLES = {
    "retrieve_documents": {"query": "Where was Ada Lovelace born?"},
    "decompose_question": {"question": "Which river flows through Ada Lovelace's birthplace?"},
    "ask_specialist": {"question": "What is the chemical symbol of gold?"},
}


@pytest.fixture
def tools(real_store: KnowledgeStore) -> dict[str, BaseTool]:
    """The three tools over a small real collection, by name."""
    real_store.add_texts(
        ["Ada Lovelace was an English mathematician, born in London in 1815.",
         "The River Thames flows through London to the North Sea."],
        [{"source": "ada", "title": "Ada Lovelace"}, {"source": "thames", "title": "River Thames"}])
    made = make_tools(real_store, FakeListChatModel(responses=[PLAN]),
                      FakeListChatModel(responses=["Au"]), k=2)
    return {t.name: t for t in made}


class _OneTool:
    """Binds the suite to the tool named `tool_name` (a mixin, not a suite of its own)."""

    tool_name: str

    @pytest.fixture(autouse=True)
    def _bind_tools(self, tools: dict[str, BaseTool]) -> None:
        self.tools = tools

    @property
    def tool_constructor(self) -> BaseTool:
        return self.tools[self.tool_name]

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return EXAMPLES[self.tool_name]


class TestRetrieveToolUnit(_OneTool, ToolsUnitTests):
    tool_name = "retrieve_documents"


class TestRetrieveToolIntegration(_OneTool, ToolsIntegrationTests):
    tool_name = "retrieve_documents"


class TestDecomposeToolUnit(_OneTool, ToolsUnitTests):
    tool_name = "decompose_question"


class TestDecomposeToolIntegration(_OneTool, ToolsIntegrationTests):
    tool_name = "decompose_question"


class TestSpecialistToolUnit(_OneTool, ToolsUnitTests):
    tool_name = "ask_specialist"


class TestSpecialistToolIntegration(_OneTool, ToolsIntegrationTests):
    tool_name = "ask_specialist"


async def test_tool_calls_give_the_same_messages_sync_and_async(
    tools: dict[str, BaseTool],
) -> None:
    """What the suite only checks the shape of: the content and artifact of each tool call."""
    for name, args in EXAMPLES.items():
        call = {"name": name, "args": args, "id": f"call-{name}", "type": "tool_call"}
        sync, other = tools[name].invoke(call), await tools[name].ainvoke(call)
        assert isinstance(sync, ToolMessage) and isinstance(other, ToolMessage)
        assert (sync.content, sync.artifact) == (other.content, other.artifact)
        assert sync.tool_call_id == f"call-{name}" and sync.name == name
    retrieved = tools["retrieve_documents"].invoke(EXAMPLES["retrieve_documents"])
    assert "[1] Ada Lovelace" in retrieved
    assert tools["decompose_question"].invoke(EXAMPLES["decompose_question"]) == (
        "1. Where was Ada Lovelace born?\n2. Which river flows through #1?")
    assert tools["ask_specialist"].invoke(EXAMPLES["ask_specialist"]) == "Au"


def test_each_argument_is_described_to_the_model(tools: dict[str, BaseTool]) -> None:
    """The docstrings' `Args:` sections become the schema's argument descriptions."""
    from langchain_core.utils.function_calling import convert_to_openai_tool

    for name, args in EXAMPLES.items():
        spec = convert_to_openai_tool(tools[name])["function"]
        (arg,) = args
        assert spec["parameters"]["required"] == [arg]
        assert len(spec["parameters"]["properties"][arg]["description"]) > 20
        assert "Args:" not in spec["description"] and len(spec["description"]) > 60
