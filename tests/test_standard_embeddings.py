"""LangChain's standard embeddings suites, run against the bundled default embedder.

The unit suite builds `LocalEmbeddings` from its parameters; the integration suite embeds real
text with the model `load_embeddings()` returns (all-MiniLM-L6-v2, offline), sync and async.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.embeddings import Embeddings
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from ragtune.tools.embeddings import DEFAULT_EMBEDDING_MODEL, LocalEmbeddings, load_embeddings

# The suite's async tests are unmarked coroutines (its own packages run pytest-asyncio in auto
# mode); mark the module, and silence the plugin's note that this marks the sync tests too.
pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:The test <Function .* is marked with '@pytest.mark.asyncio"),
]


class TestLocalEmbeddingsUnit(EmbeddingsUnitTests):
    """`LocalEmbeddings` is built from plain keyword parameters (it reads no environment)."""

    @property
    def embeddings_class(self) -> type[Embeddings]:
        return LocalEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model_name": DEFAULT_EMBEDDING_MODEL, "batch_size": 8, "precision": "float32"}


class TestDefaultEmbeddingsIntegration(EmbeddingsIntegrationTests):
    """The default embedder (`load_embeddings()`) embeds documents and queries, sync and async."""

    @property
    def embeddings_class(self) -> type[Embeddings]:
        return LocalEmbeddings

    @pytest.fixture
    def model(self) -> Embeddings:
        """The model ragtune uses when no embedder is named."""
        return load_embeddings()


def test_the_default_embedder_is_the_one_under_test() -> None:
    """The integration suite above tests what `load_embeddings()` gives, not a stand-in."""
    model = load_embeddings()
    assert isinstance(model, LocalEmbeddings)
    assert model.model_name == DEFAULT_EMBEDDING_MODEL
    assert len(model.embed_query("x")) == model.dimension == 384
