"""LangChain's standard vector store suite, run against `KnowledgeStore` on the real database.

Each test gets an empty uuid-named collection on the session's embedded PostgreSQL + pgvector,
embedded with the suite's own deterministic fake embeddings, and dropped afterwards. The suite runs
both its sync and its async tests (the store's async faces run the sync core in a worker thread).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from ragtune.tools.store import KnowledgeStore

# The suite's async tests are unmarked coroutines (its own packages run pytest-asyncio in auto
# mode); mark the module, and silence the plugin's note that this marks the sync tests too.
pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:The test <Function .* is marked with '@pytest.mark.asyncio"),
]


class TestKnowledgeStoreStandard(VectorStoreIntegrationTests):
    """`KnowledgeStore` passes the standard suite, sync and async, with `get_by_ids`."""

    @pytest.fixture
    def vectorstore(self, database: Any) -> Iterator[KnowledgeStore]:  # type: ignore[override]
        """An empty collection of its own, dropped after the test."""
        store = KnowledgeStore(database, self.get_embeddings(), f"std_{uuid.uuid4().hex[:12]}")
        try:
            yield store
        finally:
            store.delete_collection()

    @property
    def has_sync(self) -> bool:
        return True

    @property
    def has_async(self) -> bool:
        return True

    @property
    def has_get_by_ids(self) -> bool:
        return True
