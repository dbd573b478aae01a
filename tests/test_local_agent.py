"""The agent end to end on the real offline defaults: local gemma-3-270m, classifier router,
real embedder and embedded Postgres. Slow (model load and CPU generation): run with -m slow."""

from __future__ import annotations

import pytest

from ragtune.agent import Agent
from ragtune.tools.ingest import ingest_paths
from ragtune.tools.store import KnowledgeStore
from tests.conftest import REPO_ROOT

SAMPLE = REPO_ROOT / "src" / "ragtune" / "data" / "sample.jsonl"


@pytest.mark.slow
def test_offline_agent_answers_single_and_multi_hop(real_store: KnowledgeStore) -> None:
    ingest_paths(real_store, [SAMPLE])
    with Agent(store=real_store, checkpoint=False) as agent:
        single = agent.ask("In which city was Ada Lovelace born?")
        assert single.trace[0]["policy"] == "classifier"
        assert single.trace[0]["decision"] == "retrieve"
        assert "london" in single.text.lower()
        assert "Ada Lovelace" in {c["title"] for c in single.citations}

        question = "Which river flows through the city where Ada Lovelace was born?"
        first = agent.ask(question)  # read-first: the local reader reports its confidence
        read = next(e for e in first.trace if e["node"] == "read_first")
        assert 0.0 < read["scores"]["confidence"] <= 1.0
        assert read["decision"] in ("answer", "decompose")

        multi = agent.ask(question, read_first=False)
        assert multi.trace[0]["decision"] == "decompose"
        nodes = [e["node"] for e in multi.trace]
        assert nodes[:3] == ["route", "retrieve_links", "decompose"] and nodes[-1] == "answer"
        titles = {r["title"] for r in multi.retrieved}
        assert {"Ada Lovelace", "London"} <= titles  # London reached by following the link
        assert multi.steps <= agent.context.max_steps
