"""The single-hop route's rewrite loop stops when a rewrite brings nothing new, and never spins.

The rule (`graphs.routing.after_check`) is tested on hand-made states, then end to end through the
real graph: a scripted router sends every question to the single-hop route, a scripted chat model
answers, and retrieval runs on the real embedded Postgres store (deterministic fake embeddings:
these tests are about control flow, not ranking).
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from ragtune.agent import Agent
from ragtune.agents.context import Context
from ragtune.agents.evidence import distinct_sources, rewrite_stalled
from ragtune.agents.routing.decision import RouteDecision
from ragtune.graphs.routing import SINGLE_HOP_MAX_RETRIEVALS, after_check
from ragtune.tools.store import KnowledgeStore
from tests.conftest import scripted_decision


class SingleHopRouter:
    """Sends every question to the single-hop route (what a misrouted multi-hop question gets)."""

    policy = "scripted"

    def route(self, question: str, *, allowed: Any = ("retrieve",)) -> RouteDecision:
        return scripted_decision("retrieve")


def agent_over(store: KnowledgeStore, **context: Any) -> Agent:
    return Agent(store=store, model=FakeListChatModel(responses=["no idea"]),
                 router=SingleHopRouter(), checkpoint=False, **context)


def nodes(answer: Any) -> list[str]:
    return [e["node"] for e in answer.trace]


def check_event(stalled: bool, sources: int) -> dict[str, Any]:
    return {"node": "check_evidence", "detail": {"stalled": stalled, "sources_seen": sources}}


def test_sources_count_chunks_of_one_source_once() -> None:
    docs = [Document("a", id="1", metadata={"source": "s1", "title": "A"}),
            Document("b", id="2", metadata={"source": "s1", "title": "A"}),
            Document("c", id="3", metadata={"title": "C"}),
            Document("d", id="4")]
    assert distinct_sources(docs) == 3
    assert not rewrite_stalled(3, None)  # the first retrieval is no rewrite
    assert rewrite_stalled(3, 3) and not rewrite_stalled(4, 3)


@pytest.mark.parametrize(("trace", "retrievals", "expected"), [
    ([check_event(False, 3)], 1, "retrieve"),           # short evidence, first try: rewrite
    ([check_event(False, 3), check_event(True, 3)], 2, "answer"),   # rewrite found nothing new
    ([check_event(False, 3), check_event(False, 5)], 2, "retrieve"),  # it did: one more
    ([check_event(False, 5)] * 3, SINGLE_HOP_MAX_RETRIEVALS, "answer"),  # the cap
])
def test_after_check_stops_on_a_stalled_rewrite_or_the_cap(
    trace: list[dict[str, Any]], retrievals: int, expected: str
) -> None:
    state: Any = {"evidence_ok": False, "trace": trace, "retrievals": retrievals, "steps": 3}
    assert after_check(state, Context(max_steps=16, max_retrievals=8)) == expected


def test_after_check_needs_the_evidence_check() -> None:
    with pytest.raises(ValueError, match="evidence check"):
        after_check({"trace": []}, Context())


def test_a_rewrite_that_finds_nothing_new_ends_the_loop(fake_store: KnowledgeStore) -> None:
    # One paragraph only: the rewritten query can only find it again.
    fake_store.add_texts(["Ada Lovelace was an English mathematician."],
                         [{"source": "ada", "title": "Ada Lovelace"}])
    answer = agent_over(fake_store, evidence_threshold=1.0, k=3).ask(
        "Which zeppelin hangar hosted the Quetzalcoatl exhibition?")
    assert nodes(answer) == ["route", "retrieve", "check_evidence", "retrieve",
                             "check_evidence", "answer"]
    checks = [e for e in answer.trace if e["node"] == "check_evidence"]
    assert [c["decision"] for c in checks] == ["more", "stalled"]
    assert checks[1]["detail"]["stalled"] and checks[1]["detail"]["next_query"] is None
    assert "no new source" in checks[1]["reason"]
    assert answer.text == "no idea" and answer.steps == 6


def test_no_question_spends_the_step_budget_on_the_single_hop_route(
    fake_store: KnowledgeStore,
) -> None:
    # Many distinct sources, none covering the question: every rewrite may find a new one.
    fake_store.add_texts([f"Paragraph {i} is about topic number {i} and nothing else."
                          for i in range(30)],
                         [{"source": f"s{i}", "title": f"Topic {i}"} for i in range(30)])
    budget = 16
    agent = agent_over(fake_store, evidence_threshold=1.0, k=1, max_steps=budget,
                       max_retrievals=8)
    for question in ["Which zeppelin hangar hosted the Quetzalcoatl exhibition?",
                     "Who was the maternal grandfather of the architect of the Zorbing dome?"]:
        answer = agent.ask(question)
        retrievals = nodes(answer).count("retrieve")
        assert 1 <= retrievals <= SINGLE_HOP_MAX_RETRIEVALS
        assert answer.steps < budget and answer.steps == 2 + 2 * retrievals
        assert nodes(answer)[-1] == "answer"
        checks = [e for e in answer.trace if e["node"] == "check_evidence"]
        seen = [c["detail"]["sources_seen"] for c in checks]
        # Only the last check may end the loop; every rewrite before it brought a new source.
        assert all(c["decision"] == "more" for c in checks[:-1])
        assert all(later > earlier for earlier, later in zip(seen[:-1], seen[1:-1], strict=False))
        assert checks[-1]["decision"] == "stalled" or retrievals == SINGLE_HOP_MAX_RETRIEVALS
