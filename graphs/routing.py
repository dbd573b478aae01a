"""Pure routing functions: given the state (and the run's budgets), where the graph goes next.

Each is typed `-> Literal[...]` (or returns `Send`s) and raises on a state it does not expect, so
a wiring mistake fails loudly instead of looping. Budgets live in the state (steps, retrievals,
sub-answers), so termination never depends on LangGraph's recursion limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from langgraph.types import Send

from ragtune.agents.composition import decided_by_rule, question_shape
from ragtune.agents.context import Context
from ragtune.agents.decomposer import resolve_references
from ragtune.graphs.state import AgentState, SolveState

SINGLE_HOP_MAX_RETRIEVALS = 3
"""Most retrievals on the single-hop route: the question's own and two rewrites.

A rewrite helps when the first retrieval missed a term or a bridge entity, which the first
rewrite already adds (missing terms plus the titles found); later rewrites rebuild much the same
query. Without a cap one question spent all 16 steps here and still answered wrongly. With the
default budgets the route ends by step 8 of 16; `Context.max_retrievals` and the step budget can
only lower the cap.
"""


def last_check(state: Mapping[str, Any]) -> dict[str, Any]:
    """Return the detail of the run's latest `check_evidence` event (empty before the first)."""
    for item in reversed(state.get("trace") or []):
        if item.get("node") == "check_evidence":
            return dict(item.get("detail") or {})
    return {}


def steps_left(state: AgentState, context: Context) -> int:
    """Steps the run may still take before its final `answer` step."""
    return context.max_steps - 1 - state.get("steps", 0)


def budget_exhausted(state: AgentState, context: Context) -> bool:
    """True when the run has used its step budget (the answer node is always allowed)."""
    return steps_left(state, context) <= 0


def after_route(state: AgentState) -> Literal["retrieve", "retrieve_links", "specialist"]:
    """Follow the router's decision; a multi-hop question first retrieves by following links."""
    route = state.get("route")
    if route == "retrieve":
        return "retrieve"
    if route == "decompose":
        return "retrieve_links"
    if route == "specialist":
        return "specialist"
    raise ValueError(f"after_route: unexpected route {route!r}")


def after_links(state: AgentState, context: Context) -> Literal["read_first", "decompose"]:
    """Try a read-first answer before decomposing, unless the context turns that off or the
    question's answer is decided by rule from one sub-question per entity (a comparison of dates
    or quantities, a "same"/"both" question)."""
    if decided_by_rule(question_shape(state.get("question") or "")):
        return "decompose"
    return "read_first" if context.read_first else "decompose"


def after_read_first(state: AgentState) -> Literal["answer", "decompose"]:
    """Answer with the read-first draft when it was confident enough; else decompose."""
    draft = state.get("draft")
    if draft is None:
        raise ValueError("after_read_first: the read-first step did not run")
    return "answer" if draft["accepted"] else "decompose"


def after_check(state: AgentState, context: Context) -> Literal["retrieve", "answer"]:
    """Retrieve again (rewritten query) when evidence is short and worth another try; else answer.

    The loop stops when the evidence is enough, when the last rewrite brought no source not
    already seen (``stalled`` in the check's detail: rewriting again would search for the same
    things), after `SINGLE_HOP_MAX_RETRIEVALS` retrievals, or when the budgets run out.
    """
    if state.get("evidence_ok") is None:
        raise ValueError("after_check: the evidence check did not run")
    if state["evidence_ok"] or last_check(state).get("stalled"):
        return "answer"
    retrievals = state.get("retrievals", 0)
    cap = min(context.max_retrievals, SINGLE_HOP_MAX_RETRIEVALS)
    # Another round costs two steps (retrieve, check_evidence) before the answer.
    if retrievals >= cap or steps_left(state, context) < 2:
        return "answer"
    return "retrieve"


def ready_sub_questions(state: AgentState) -> list[SolveState]:
    """Return the sub-questions not yet answered whose references are all answered, resolved."""
    answers = {a["index"]: a["answer"] for a in state.get("sub_answers", [])}
    return [
        SolveState(index=s["index"], question=resolve_references(s["question"], answers),
                   steps=state.get("steps", 0))
        for s in state.get("sub_questions", [])
        if s["index"] not in answers and all(d in answers for d in s["depends_on"])
    ]


def schedule_sub_questions(state: AgentState, context: Context) -> list[Send] | Literal["answer"]:
    """Fan out every ready sub-question in parallel; answer when none is left or budgets run out.

    Independent sub-questions (a comparison's two sides) run together; a chain runs one link per
    round, since each link waits for the answer it refers to.
    """
    if "sub_questions" not in state:
        raise ValueError("schedule_sub_questions: no decomposition in state")
    ready = ready_sub_questions(state)
    # Each branch is one step and at most one retrieval; send only what the budgets still allow.
    room = min(steps_left(state, context),
               context.max_retrievals - state.get("retrievals", 0))
    if not ready or room <= 0:
        return "answer"
    return [Send("solve", item) for item in ready[:room]]
