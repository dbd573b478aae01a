"""LangChain's standard chat model suites, run against `ServedAdapterModel` on a real peer.

The peer is llama-cpp-python's OpenAI-compatible server (`tests.served_peer`): a tiny random
Gemma 3 with a LoRA adapter served under the name `reader`, the way vLLM serves adapters with
`--enable-lora`. What a served adapter lacks is declared through the suite's own properties:
tool calling (and so tool choice and structured output), JSON mode, media inputs, and a per-call
switch to other weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from ragtune.agents.llama_cpp_model import llama_cpp_available
from ragtune.agents.served_adapters import ServedAdapterModel
from tests.base_model_features import BaseModelFeatures
from tests.served_peer import served_peer

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:The test <Function .* is marked with '@pytest.mark.asyncio"),
]
GREEDY = {"repeat_penalty": 1.0}


class _Served(BaseModelFeatures):
    """What both suites share: the class and what a served base-model adapter lacks."""

    base_url = "http://127.0.0.1:9/v1"

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ServedAdapterModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # Few tokens: the random model never stops on its own, and the suite calls it often.
        return {"base_url": self.base_url, "served_name": "reader", "task": "reader",
                "max_tokens": 16, "extra_body": GREEDY}


class TestServedAdapterUnit(_Served, ChatModelUnitTests):
    """Construction with LangChain's standard parameters, tracing parameters, serialisation."""

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "served_name": "reader", "task": "reader"}


@pytest.fixture(scope="module")
def peer_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API root of the peer server, started once for the module."""
    with served_peer(tmp_path_factory.mktemp("served-suite")) as peer:
        yield peer["base_url"]


@pytest.mark.skipif(not llama_cpp_available(), reason="llama-cpp-python is not installed")
class TestServedAdapterIntegration(_Served, ChatModelIntegrationTests):
    """invoke, stream, batch, conversations, stop sequences and usage, sync and async."""

    @pytest.fixture(autouse=True)
    def _bind_peer(self, peer_url: str) -> None:
        self.base_url = peer_url
