"""The answering strategies `ragtune bench qa` compares, each a callable on one question.

- `no-retrieval`: the chat model alone (few-shot `SPECIALIST_PROMPT`, the base model, no adapter).
- `rag-base`: one hybrid retrieval, then the chat model answers from the paragraphs (few-shot
  `ANSWER_PROMPT`, the base model, no adapter): retrieval alone.
- `rag`: one hybrid retrieval, then the reader answers from the paragraphs (with a local model,
  the `reader` adapter): retrieval plus fine-tuning. Both rag rows retrieve k distinct sources, as
  the agent does (`ragtune.tools.distinct`).
- `specialist`: a `knowledge` adapter trained on the split's paragraph pool answers alone.
- `multi-step`: the orchestrator forced to decompose every question (retrieval per sub-question),
  with no read-first shortcut.
- `adaptive`: the orchestrator with its router (and the read-first shortcut on the decompose route).
- `oracle-router` is not run: the report derives it from the other strategies' results.

Every strategy returns a `Prediction`; model calls and tokens are counted by a LangChain callback
(`count_model_calls`), so they include every call a graph run makes.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel

from ragtune.agents.routing.decision import RouteDecision
from ragtune.evaluation.datasets import QAItem

STRATEGIES = ("no-retrieval", "rag-base", "rag", "specialist", "multi-step", "adaptive",
              "oracle-router")
RUN_STRATEGIES = STRATEGIES[:-1]
"""Strategies that run models; `oracle-router` is computed from their results."""


@dataclass
class Prediction:
    """What one strategy did with one question."""

    answer: str
    retrieved_titles: list[str] = field(default_factory=list)
    steps: int = 1
    route: str = ""
    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    cpu_s: float = 0.0
    exhausted: bool = False
    confidence: float | None = None
    """The reader's confidence in its read-first answer, when that step ran (accepted or not)."""


class ModelCallCounter(BaseCallbackHandler):
    """Count chat-model calls and their tokens (thread-safe)."""

    def __init__(self) -> None:
        self.calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self._lock = threading.Lock()

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        with self._lock:
            self.calls += 1

    def on_llm_start(self, serialized: Any, prompts: Any, **kwargs: Any) -> None:
        with self._lock:
            self.calls += 1

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        for generations in response.generations:
            for generation in generations:
                usage = getattr(getattr(generation, "message", None), "usage_metadata", None)
                if usage:
                    with self._lock:
                        self.input_tokens += int(usage.get("input_tokens", 0))
                        self.output_tokens += int(usage.get("output_tokens", 0))


_COUNTER: ContextVar[ModelCallCounter | None] = ContextVar("ragtune_model_calls", default=None)
_REGISTERED = threading.Lock()
_registered = False


@contextmanager
def count_model_calls() -> Iterator[ModelCallCounter]:
    """Count every chat-model call made in this context (and the threads it spawns)."""
    global _registered
    with _REGISTERED:
        if not _registered:
            from langchain_core.tracers.context import register_configure_hook

            register_configure_hook(_COUNTER, inheritable=True)
            _registered = True
    counter = ModelCallCounter()
    token = _COUNTER.set(counter)
    try:
        yield counter
    finally:
        _COUNTER.reset(token)


class FixedRouter:
    """A router that always picks `action` when allowed (else the first allowed action)."""

    def __init__(self, action: str) -> None:
        self.action = action

    def route(self, question: str, *, allowed: tuple[str, ...] | None = None) -> RouteDecision:
        """Return the fixed decision."""
        allowed = allowed or ("retrieve", "decompose", "specialist")
        action = self.action if self.action in allowed else allowed[0]
        return RouteDecision(action=action, policy="fixed",
                             reason=f"strategy always {self.action}s")


@dataclass
class StrategyModels:
    """The models and store a run uses (objects, so tests can pass scripted fakes)."""

    store: Any
    chat_model: BaseChatModel
    reader_model: BaseChatModel
    specialist_model: BaseChatModel | None
    agent_factory: Callable[[Any], Any]
    """Makes an `Agent` with a router (None: the configured one)."""
    k: int = 5
    read_first_confidence: float | None = None
    """The adaptive strategy's read-first threshold (None: the agent's own)."""
    decomposer_model: BaseChatModel | None = None
    """The agents' decomposer, when known: only read to report the adapter it serves."""


def _timed(run: Callable[[], Prediction]) -> Prediction:
    with count_model_calls() as counter:
        wall, cpu = time.perf_counter(), time.process_time()
        prediction = run()
        prediction.latency_s = time.perf_counter() - wall
        prediction.cpu_s = time.process_time() - cpu
    prediction.model_calls = counter.calls
    prediction.input_tokens = counter.input_tokens
    prediction.output_tokens = counter.output_tokens
    return prediction


def make_strategy(name: str, models: StrategyModels) -> Callable[[QAItem], Prediction]:
    """Return the callable that runs strategy `name` on one question."""
    from ragtune.agents.answerer import answer_from_documents
    from ragtune.agents.prompts import SPECIALIST_PROMPT
    from ragtune.agents.specialist import ask_specialist

    if name == "no-retrieval":
        def no_retrieval(item: QAItem) -> Prediction:
            reply = ask_specialist(item.question, models.chat_model, prompt=SPECIALIST_PROMPT)
            return Prediction(reply.text, route="no-retrieval")
        return lambda item: _timed(lambda: no_retrieval(item))
    if name in ("rag", "rag-base"):
        from ragtune.tools.distinct import retrieve_sources

        reader = models.reader_model if name == "rag" else models.chat_model

        def rag(item: QAItem) -> Prediction:
            hits = retrieve_sources(models.store, item.question, models.k, mode="hybrid")
            docs = [h.to_document() for h in hits]
            result = answer_from_documents(item.question, docs, reader)
            return Prediction(result.text, [str(h.title) for h in hits if h.title], steps=2,
                              route="rag")
        return lambda item: _timed(lambda: rag(item))
    if name == "specialist":
        if models.specialist_model is None:
            raise ValueError("the specialist strategy needs a specialist model")
        specialist = models.specialist_model

        def ask(item: QAItem) -> Prediction:
            reply = ask_specialist(item.question, specialist)
            return Prediction(reply.text, route="specialist")
        return lambda item: _timed(lambda: ask(item))
    if name in ("multi-step", "adaptive"):
        agent = models.agent_factory(FixedRouter("decompose") if name == "multi-step" else None)
        if name == "multi-step":
            # Always decompose: no read-first shortcut.
            agent.context = dataclasses.replace(agent.context, read_first=False)
        elif models.read_first_confidence is not None:
            agent.context = dataclasses.replace(
                agent.context, read_first_confidence=models.read_first_confidence)

        def orchestrate(item: QAItem) -> Prediction:
            answer = agent.ask(item.question)
            route = next((e.get("decision", "") for e in answer.trace
                          if e.get("node") == "route"), "")
            if any(e.get("node") == "read_first" and e.get("decision") == "answer"
                   for e in answer.trace):
                route = "read-first"  # decompose-routed, but the read-first answer stood
            confidence = next((e.get("scores", {}).get("confidence") for e in answer.trace
                               if e.get("node") == "read_first"), None)
            titles = [str(c.get("title")) for c in answer.retrieved if c.get("title")]
            return Prediction(answer.text, titles, steps=answer.steps, route=route,
                              exhausted=answer.exhausted, confidence=confidence)
        return lambda item: _timed(lambda: orchestrate(item))
    raise ValueError(f"unknown strategy {name!r}")
