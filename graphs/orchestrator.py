"""The orchestrator graph: route, then retrieve / decompose / ask the specialist, then answer.

```
START -> route -+-> retrieve -> check_evidence -+-> answer -> END
                |       ^----- (rewritten) -----+
                +-> retrieve_links -> read_first -+-> answer (confident)
                |         |                        v
                |         +------------------> decompose -> schedule --Send--> solve (each ready)
                |                                              ^------------------+
                |                                              +--> answer
                +-> specialist -> answer
```

`build_graph()` compiles it; `graph` is the module-level instance that `langgraph.json` exposes to
LangGraph Studio (`langgraph dev`). The run's configuration is the `Context` dataclass.
"""

from __future__ import annotations

from typing import Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import RetryPolicy, Send

from ragtune.agents.context import Context
from ragtune.graphs import routing
from ragtune.graphs.nodes import OrchestratorNodes, context_of
from ragtune.graphs.resources import DEFAULT_RESOURCES, Resources
from ragtune.graphs.state import AgentState, InputState, OutputState


def _after_check(state: AgentState, runtime: Runtime[Context]) -> Literal["retrieve", "answer"]:
    return routing.after_check(state, context_of(runtime))


def _after_links(state: AgentState,
                 runtime: Runtime[Context]) -> Literal["read_first", "decompose"]:
    return routing.after_links(state, context_of(runtime))


def _schedule(state: AgentState, runtime: Runtime[Context]) -> list[Send] | Literal["answer"]:
    return routing.schedule_sub_questions(state, context_of(runtime))


def _retryable(exc: Exception) -> bool:
    """Retry only transient database trouble; bad input or configuration fails at once."""
    import psycopg
    from psycopg_pool import PoolTimeout

    from ragtune.errors import DatabaseError

    return isinstance(exc, (DatabaseError, psycopg.OperationalError, PoolTimeout))


def _schedule_node(state: AgentState) -> dict[str, Any]:
    """A junction the sub-question rounds return to; the routing lives in `_schedule`."""
    return {}


def build_graph(resources: Resources | None = None, checkpointer: Any = None) -> Any:
    """Compile the orchestrator over `resources` (the shared defaults when None).

    Args:
        resources: Where nodes get the store, the models and the router.
        checkpointer: A LangGraph checkpointer for threads (e.g. `PostgresSaver`), or None.
    """
    nodes = OrchestratorNodes(resources or DEFAULT_RESOURCES)
    io_retry = RetryPolicy(max_attempts=3, initial_interval=0.5, retry_on=_retryable)
    builder = StateGraph(AgentState, context_schema=Context, input_schema=InputState,
                         output_schema=OutputState)
    builder.add_node("route", nodes.route)
    builder.add_node("retrieve", nodes.retrieve, retry_policy=io_retry)
    builder.add_node("retrieve_links", nodes.retrieve_links, retry_policy=io_retry)
    builder.add_node("check_evidence", nodes.check_evidence)
    builder.add_node("read_first", nodes.read_first)
    builder.add_node("decompose", nodes.decompose)
    builder.add_node("schedule", _schedule_node)
    builder.add_node("solve", nodes.solve, retry_policy=io_retry)
    builder.add_node("specialist", nodes.specialist)
    builder.add_node("answer", nodes.answer)

    builder.add_edge(START, "route")
    builder.add_conditional_edges("route", routing.after_route)
    builder.add_edge("retrieve", "check_evidence")
    builder.add_conditional_edges("check_evidence", _after_check)
    builder.add_conditional_edges("retrieve_links", _after_links)
    builder.add_conditional_edges("read_first", routing.after_read_first)
    builder.add_edge("decompose", "schedule")
    builder.add_conditional_edges("schedule", _schedule, ["solve", "answer"])
    builder.add_edge("solve", "schedule")
    builder.add_edge("specialist", "answer")
    builder.add_edge("answer", END)
    return builder.compile(checkpointer=checkpointer, name="ragtune")


graph = build_graph()
