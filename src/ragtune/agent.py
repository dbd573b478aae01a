"""The embedded API: `Agent` answers questions with the orchestrator graph.

    from ragtune import Agent

    agent = Agent(collection="demo")                  # offline defaults
    answer = agent.ask("Which river flows through the city where Ada Lovelace was born?")
    print(answer.text, [c["title"] for c in answer.citations])

`ask` / `aask` return an `Answer`; `stream` / `astream` yield node updates and model tokens as they
happen. With `thread_id`, runs are checkpointed in the same PostgreSQL (langgraph-checkpoint-
postgres): a run interrupted by an error can be resumed with `resume(thread_id)`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from ragtune.agents.context import Context
from ragtune.errors import ConfigError, InputError

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from ragtune.tools.store import KnowledgeStore


@dataclass
class Answer:
    """The result of one question."""

    text: str
    citations: list[dict[str, Any]] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    exhausted: bool = False
    thread_id: str | None = None
    latency_s: float = 0.0
    retrieved: list[dict[str, Any]] = field(default_factory=list)
    turn: int = 1
    """Which answered question of its thread this is (1 without a thread)."""

    def to_json(self) -> dict[str, Any]:
        """Return the answer as JSON-ready data."""
        return {"answer": self.text, "citations": self.citations, "trace": self.trace,
                "usage": self.usage, "steps": self.steps, "exhausted": self.exhausted,
                "thread_id": self.thread_id, "latency_s": round(self.latency_s, 3),
                "retrieved": self.retrieved, "turn": self.turn}


@dataclass
class StreamEvent:
    """One streamed event: a node's state update, or a token the answering model produced."""

    kind: str  # "update" | "token"
    node: str
    data: Any


class Agent:
    """The ragtune orchestrator, embedded in an application.

    Args:
        store: A `KnowledgeStore` to retrieve from (default: the context's collection).
        model: Chat model for decomposition and answers: a `"provider:model"` string or a
            LangChain chat model object.
        specialist_model: The specialist: a spec string or a chat model object.
        router: A router object (default: the context's routing policy).
        context: A full `Context`; keyword overrides below are applied on top of it.
        checkpoint: Keep thread state in PostgreSQL so runs with a `thread_id` can resume
            (default True). Sync and async faces share the checkpoints.
        database_url: The PostgreSQL with pgvector (default: `RAGTUNE_DATABASE_URL`, else the
            embedded server). Deployment configuration: no run can change it.
        home: The ragtune home of the embedded server (default: `RAGTUNE_HOME`).
        **overrides: Any `Context` field (collection="demo", routing_policy="rules", ...).
    """

    def __init__(
        self,
        *,
        store: KnowledgeStore | None = None,
        model: str | BaseChatModel | None = None,
        specialist_model: str | BaseChatModel | None = None,
        router: Any = None,
        context: Context | None = None,
        checkpoint: bool = True,
        database_url: str | None = None,
        home: str | None = None,
        **overrides: Any,
    ) -> None:
        from ragtune.graphs.resources import Resources

        if isinstance(model, str):
            overrides["model"] = model
            model = None
        if isinstance(specialist_model, str):
            overrides["specialist_model"] = specialist_model
            specialist_model = None
        self.context = _with_overrides(context or Context.from_env(), overrides)
        from ragtune.agents.models import check_model_spec

        if model is None:
            check_model_spec(self.context.model)
        if specialist_model is None:
            check_model_spec(self.context.specialist_model)
        self.resources = Resources(store=store, chat_model=model,
                                   specialist_model=specialist_model, router=router,
                                   database_url=database_url, home=home)
        self._checkpoint = checkpoint
        self._graphs: dict[bool, Any] = {}
        self._graph_lock = threading.Lock()

    # -- plumbing ------------------------------------------------------------------------------

    def _compiled(self, thread_id: str | None = "") -> Any:
        """The graph for a run: checkpointed when it has a thread (and checkpoints are on).

        A run without a thread id could never be resumed, so it is not checkpointed at all.
        """
        threaded = self._checkpoint and thread_id is not None
        with self._graph_lock:
            if threaded not in self._graphs:
                from ragtune.graphs.orchestrator import build_graph

                checkpointer = None
                if threaded:
                    from ragtune.graphs.checkpoint import open_checkpointer

                    checkpointer = open_checkpointer(self.resources.database())
                self._graphs[threaded] = build_graph(self.resources, checkpointer=checkpointer)
            return self._graphs[threaded]

    def _config(self, thread_id: str | None) -> dict[str, Any]:
        return {"configurable": {"thread_id": thread_id or f"ephemeral-{uuid.uuid4().hex}"},
                "recursion_limit": 4 * self.context.max_steps + 10}

    def _prepare(self, question: Any, overrides: dict[str, Any]) -> tuple[str, Context]:
        from ragtune.graphs.nodes import validate_question

        context = _with_overrides(self.context, overrides)
        return validate_question(question, context.max_question_chars), context

    @staticmethod
    def _answer(state: dict[str, Any], thread_id: str | None, started: float) -> Answer:
        return Answer(text=state.get("answer", ""), citations=list(state.get("citations", [])),
                      trace=list(state.get("trace", [])), usage=dict(state.get("usage", {})),
                      steps=int(state.get("steps", 0)), exhausted=bool(state.get("exhausted")),
                      thread_id=thread_id, latency_s=time.perf_counter() - started,
                      retrieved=list(state.get("retrieved", [])),
                      turn=max(1, len(state.get("history", []))))

    # -- public API ----------------------------------------------------------------------------

    def ask(self, question: str, *, thread_id: str | None = None, **overrides: Any) -> Answer:
        """Answer `question`; `thread_id` checkpoints the run so it can be resumed."""
        text, context = self._prepare(question, overrides)
        started = time.perf_counter()
        graph = self._compiled(thread_id)
        state = graph.invoke({"question": text}, self._config(thread_id), context=context)
        return self._answer(state, thread_id, started)

    async def aask(self, question: str, *, thread_id: str | None = None,
                   **overrides: Any) -> Answer:
        """Async `ask`."""
        import asyncio

        text, context = self._prepare(question, overrides)
        started = time.perf_counter()
        graph = await asyncio.to_thread(self._compiled, thread_id)
        state = await graph.ainvoke({"question": text}, self._config(thread_id), context=context)
        return self._answer(state, thread_id, started)

    def resume(self, thread_id: str, **overrides: Any) -> Answer:
        """Finish the interrupted run of `thread_id` from its last checkpoint.

        Raises:
            InputError: The thread has no interrupted run (unknown, or its last run finished).
        """
        context, config, started = self._resumable(thread_id, overrides)
        graph = self._compiled()
        if not graph.get_state(config).next:
            raise InputError(f"Thread {thread_id!r} has no interrupted run to resume")
        state = graph.invoke(None, config, context=context)
        return self._answer(state, thread_id, started)

    async def aresume(self, thread_id: str, **overrides: Any) -> Answer:
        """Async `resume`."""
        import asyncio

        context, config, started = self._resumable(thread_id, overrides)
        graph = await asyncio.to_thread(self._compiled)
        if not (await graph.aget_state(config)).next:
            raise InputError(f"Thread {thread_id!r} has no interrupted run to resume")
        state = await graph.ainvoke(None, config, context=context)
        return self._answer(state, thread_id, started)

    def pending(self, thread_id: str) -> bool:
        """Return whether `thread_id` has an interrupted run that `resume` would finish."""
        if not self._checkpoint:
            return False
        return bool(self._compiled().get_state(self._config(thread_id)).next)

    def _resumable(self, thread_id: str,
                   overrides: dict[str, Any]) -> tuple[Context, dict[str, Any], float]:
        if not self._checkpoint:
            raise ConfigError("resume() needs Agent(checkpoint=True)")
        if not isinstance(thread_id, str) or not thread_id.strip():
            raise InputError("resume() needs the thread id of an interrupted run")
        return (_with_overrides(self.context, overrides), self._config(thread_id),
                time.perf_counter())

    def stream(self, question: str, *, thread_id: str | None = None,
               **overrides: Any) -> Iterator[StreamEvent]:
        """Yield node updates and answer tokens as the run proceeds."""
        text, context = self._prepare(question, overrides)
        graph = self._compiled(thread_id)
        for mode, chunk in graph.stream({"question": text}, self._config(thread_id),
                                        context=context, stream_mode=["updates", "messages"]):
            yield from _events(mode, chunk)

    async def astream(self, question: str, *, thread_id: str | None = None,
                      **overrides: Any) -> AsyncIterator[StreamEvent]:
        """Async `stream`."""
        import asyncio

        text, context = self._prepare(question, overrides)
        graph = await asyncio.to_thread(self._compiled, thread_id)
        async for mode, chunk in graph.astream({"question": text}, self._config(thread_id),
                                               context=context,
                                               stream_mode=["updates", "messages"]):
            for item in _events(mode, chunk):
                yield item

    def close(self) -> None:
        """Forget the compiled graph and cached resources (databases close with the process,
        or with `ragtune.tools.database.close_shared_databases()`)."""
        self.resources.close()
        self._graphs.clear()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _events(mode: str, chunk: Any) -> Iterator[StreamEvent]:
    if mode == "updates":
        for node, update in (chunk or {}).items():
            yield StreamEvent("update", node, update)
    elif mode == "messages":
        message, meta = chunk
        content = getattr(message, "content", "")
        if content:
            yield StreamEvent("token", str(meta.get("langgraph_node", "")), content)


def _with_overrides(context: Context, overrides: dict[str, Any]) -> Context:
    if not overrides:
        return context
    names = {f.name for f in fields(Context)}
    unknown = set(overrides) - names
    if unknown:
        raise ConfigError(f"Unknown option(s): {', '.join(sorted(unknown))}; Context fields are "
                          f"{', '.join(sorted(names))}")
    return replace(context, **{k: v for k, v in overrides.items() if v is not None})
