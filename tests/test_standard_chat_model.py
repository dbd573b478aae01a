"""LangChain's standard chat model suites, run against `LocalChatModel` on a tiny real transformer.

The model is `tests/tiny_lm.py`'s two-layer random Llama with its own BPE tokenizer, loaded the
way ragtune loads gemma-3-270m (`LocalCausalLM.from_directory`), so every call goes through the real
prompt rendering, `generate`, streaming and stop-sequence code. What a base model truly lacks is
declared through the suite's own properties: tool calling (and so tool choice and structured
output), JSON mode, image/audio/PDF inputs, and a per-call switch to other weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from ragtune.agents.local_model import LocalCausalLM, LocalChatModel
from tests.base_model_features import BaseModelFeatures
from tests.tiny_lm import build_tiny_lm

# The suite's async tests are unmarked coroutines (its own packages run pytest-asyncio in auto
# mode); mark the module, and silence the plugin's note that this marks the sync tests too.
pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:The test <Function .* is marked with '@pytest.mark.asyncio"),
]

TINY_MODEL_ID = "tests/tiny-llama"


@pytest.fixture(scope="module")
def tiny_runtime(tmp_path_factory: pytest.TempPathFactory) -> LocalCausalLM:
    """The tiny random Llama, built once for the module and loaded like a cached local model."""
    folder = build_tiny_lm(tmp_path_factory.mktemp("tiny-lm") / "model")
    return LocalCausalLM.from_directory(Path(folder), model_id=TINY_MODEL_ID)


class _TinyLocalModel(BaseModelFeatures):
    """What both suites share: the class, its runtime, and what a base model lacks (a mixin)."""

    @pytest.fixture(autouse=True)
    def _bind_runtime(self, tiny_runtime: LocalCausalLM) -> None:
        self.runtime = tiny_runtime

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return LocalChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # Few tokens: the random model never stops on its own, and the suite calls it often.
        return {"runtime": self.runtime, "model": TINY_MODEL_ID, "max_new_tokens": 24}


class TestLocalChatModelUnit(_TinyLocalModel, ChatModelUnitTests):
    """Construction with LangChain's standard parameters, tracing parameters, serialisation."""

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # The unit suite adds an `api_key` for hosted models; a local model has none to take.
        params = dict(super().standard_chat_model_params)
        assert params.pop("api_key") == "test"
        return params

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # The standard parameters (max_tokens among them) come from the suite here.
        return {"runtime": self.runtime, "model": TINY_MODEL_ID}


class TestLocalChatModelIntegration(_TinyLocalModel, ChatModelIntegrationTests):
    """invoke, stream, batch, conversations, stop sequences and usage, sync and async."""
