"""A graph for `ragtune serve --graphs` in tests: the real orchestrator over a scripted model.

`tests/test_serve.py` serves it through the real server. Everything but the model is real: the
orchestrator graph (`build_graph`), its retrieval from the run context's collection in the
server's database, the rules router, the checkpointer aegra attaches. The chat model is scripted
(it always answers `ANSWER`), optionally after `SERVE_TEST_DELAY_S` seconds so a test can catch a
run in flight; the embeddings are langchain-core's deterministic fakes (`EMBEDDING_SIZE`
dimensions), so a run takes milliseconds and needs no model download.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from ragtune.agents.router import load_router
from ragtune.graphs.orchestrator import build_graph
from ragtune.graphs.resources import Resources

ANSWER = "London"
EMBEDDING_SIZE = 32
DELAY_ENV = "SERVE_TEST_DELAY_S"


class DelayedScriptedModel(FakeListChatModel):
    """A scripted chat model that takes `SERVE_TEST_DELAY_S` seconds (default 0) per call."""

    def _delay(self) -> float:
        return float(os.environ.get(DELAY_ENV) or 0)

    def _generate(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self._delay())
        return super()._generate(*args, **kwargs)

    async def _agenerate(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(self._delay())
        return super()._generate(*args, **kwargs)


graph = build_graph(Resources(
    chat_model=DelayedScriptedModel(responses=[ANSWER]),
    router=load_router("rules"),
    embeddings=DeterministicFakeEmbedding(size=EMBEDDING_SIZE),
))
