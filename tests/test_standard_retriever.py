"""LangChain's standard retriever suite, run against `KnowledgeStore.as_retriever()`.

The retriever searches a uuid-named collection on the session's real database, filled with a few
paragraphs embedded by the real default model, in the store's default (hybrid) mode.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_core.retrievers import BaseRetriever
from langchain_tests.integration_tests import RetrieversIntegrationTests

from ragtune.errors import ConfigError
from ragtune.tools.store import KnowledgeStore

# The suite's async tests are unmarked coroutines (its own packages run pytest-asyncio in auto
# mode); mark the module, and silence the plugin's note that this marks the sync tests too.
pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:The test <Function .* is marked with '@pytest.mark.asyncio"),
]

PARAGRAPHS = {
    "Ada Lovelace": "Ada Lovelace was an English mathematician, born in London in 1815.",
    "River Thames": "The River Thames flows through Oxford and London to the North Sea.",
    "Uppsala University": "Uppsala University in Sweden was founded in 1477.",
    "Marie Curie": "Marie Curie, born in Warsaw, won Nobel Prizes in physics and chemistry.",
    "Bread": "Bread rises because yeast produces carbon dioxide in the dough.",
}


@pytest.fixture
def knowledge(database: Any, embedder: Any) -> Iterator[KnowledgeStore]:
    """A collection of `PARAGRAPHS`, one per source, dropped after the test."""
    store = KnowledgeStore(database, embedder, f"std_{uuid.uuid4().hex[:12]}")
    store.add_texts(list(PARAGRAPHS.values()),
                    [{"source": title, "title": title} for title in PARAGRAPHS])
    try:
        yield store
    finally:
        store.delete_collection()


class TestKnowledgeStoreRetriever(RetrieversIntegrationTests):
    """`store.as_retriever(k=...)` honours k at construction and per call, sync and async."""

    @pytest.fixture(autouse=True)
    def _bind_store(self, knowledge: KnowledgeStore) -> None:
        self.store = knowledge

    @property
    def retriever_constructor(self) -> Callable[..., BaseRetriever]:  # type: ignore[override]
        return self.store.as_retriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"k": 2}

    @property
    def retriever_query_example(self) -> str:
        return "Where was Ada Lovelace born?"


def test_retriever_ranks_the_relevant_paragraph_first(knowledge: KnowledgeStore) -> None:
    for mode in ("dense", "text", "hybrid"):
        docs = knowledge.as_retriever(k=2, mode=mode).invoke("Which river flows through Oxford?")
        assert docs[0].metadata == {"source": "River Thames", "title": "River Thames"}
    only = knowledge.as_retriever(k=5, filter={"title": "Bread"}).invoke("Ada Lovelace")
    assert [d.metadata["title"] for d in only] == ["Bread"]
    # A per-call k overrides the constructor's; search_kwargs given too are kept.
    retriever = knowledge.as_retriever(k=4, search_kwargs={"mode": "text"})
    assert retriever.search_kwargs == {"k": 4, "mode": "text"}
    assert len(retriever.invoke("London", k=1)) == 1


def test_retriever_rejects_an_unknown_mode(knowledge: KnowledgeStore) -> None:
    with pytest.raises(ConfigError, match="Unknown search mode"):
        knowledge.as_retriever(mode="fuzzy")
