"""The orchestrator's state: a narrow input, a rich internal state, a clear output, and reducers.

Parallel branches (sub-questions fanned out with `Send`) write to the same keys, so every key they
touch has a reducer: documents merge by id, sub-answers by index, counters add up, traces append.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from langchain_core.documents import Document


class Citation(TypedDict):
    """A paragraph the answer relies on."""

    id: str
    title: str | None
    source: str


class TraceEvent(TypedDict, total=False):
    """One decision or step, for Studio and `--trace`: what happened, who decided, why, how long."""

    step: int
    node: str
    decision: str
    policy: str
    reason: str
    scores: dict[str, float]
    elapsed_ms: float
    detail: dict[str, Any]


class SubQuestion(TypedDict):
    """A planned sub-question; `question` may refer to earlier answers as `#n`."""

    index: int
    question: str
    depends_on: list[int]


class Draft(TypedDict):
    """The read-first answer of a decompose-routed question, and whether it stands."""

    answer: str
    confidence: float | None
    accepted: bool
    citations: list[Citation]


class SubAnswer(TypedDict, total=False):
    """The answer of one sub-question, with the question as it ran (references resolved)."""

    index: int
    question: str
    answer: str
    route: str
    document_ids: list[str]
    """The paragraphs retrieved for it, in rank order."""
    cited_ids: list[str]
    """The paragraphs its answer rests on (the final answer cites them too)."""


class Turn(TypedDict):
    """One answered question of a thread."""

    question: str
    answer: str


def merge_documents(left: list[Document] | None, right: list[Document] | None) -> list[Document]:
    """Append `right` to `left`, skipping documents whose id (else content) is already there."""
    merged = list(left or [])
    seen = {doc.id or doc.page_content for doc in merged}
    for doc in right or []:
        key = doc.id or doc.page_content
        if key not in seen:
            seen.add(key)
            merged.append(doc)
    return merged


def merge_sub_answers(left: list[SubAnswer] | None,
                      right: list[SubAnswer] | None) -> list[SubAnswer]:
    """Merge sub-answers by index (a later answer for an index replaces the earlier one)."""
    by_index = {a["index"]: a for a in left or []}
    for answer in right or []:
        by_index[answer["index"]] = answer
    return [by_index[i] for i in sorted(by_index)]


def add_usage(left: dict[str, int] | None, right: dict[str, int] | None) -> dict[str, int]:
    """Sum token counts key by key."""
    left, right = left or {}, right or {}
    return {key: left.get(key, 0) + right.get(key, 0) for key in {*left, *right}}


class InputState(TypedDict):
    """What a caller gives: the question."""

    question: str


class OutputState(TypedDict, total=False):
    """What a caller gets back."""

    answer: str
    """The short answer."""
    citations: list[Citation]
    """The paragraphs the answer relies on."""
    trace: Annotated[list[TraceEvent], operator.add]
    """Every decision and step, in order."""
    steps: Annotated[int, operator.add]
    """Graph steps taken (the budget counts these)."""
    exhausted: bool
    """True when a budget ran out and the agent answered with what it had."""
    retrieved: list[Citation]
    """Every paragraph retrieved during the run, in retrieval order (for evaluation)."""
    history: Annotated[list[Turn], operator.add]
    """The thread's answered questions, oldest first (this run's is last)."""


class AgentState(InputState, OutputState, total=False):
    """Everything the nodes share during a run."""

    route: str
    """The action chosen for the question: retrieve, decompose or specialist."""
    query: str
    """The current retrieval query (the question, or a rewrite of it)."""
    documents: Annotated[list[Document], merge_documents]
    """Every paragraph retrieved so far, deduplicated, in retrieval order."""
    retrievals: Annotated[int, operator.add]
    """Retrievals made so far."""
    evidence_ok: bool
    """Whether the last evidence check found enough to answer."""
    sub_questions: list[SubQuestion]
    """The decomposition's plan."""
    sub_answers: Annotated[list[SubAnswer], merge_sub_answers]
    """Answers of the sub-questions run so far."""
    specialist_answer: str
    """What the specialist model answered, when it was asked."""
    draft: Draft | None
    """The read-first answer (decompose route), when one was tried."""
    specialist_adapter: str | None
    """The knowledge/custom adapter whose domain matched the question (route step), if any."""
    usage: Annotated[dict[str, int], add_usage]
    """Model tokens used, summed over calls."""


class SolveState(TypedDict):
    """The private state of one sub-question branch (sent with `Send`)."""

    index: int
    question: str
    """The sub-question with its `#n` references already replaced by earlier answers."""
    steps: int
    """Steps taken by the run when the branch was sent (for the trace)."""
