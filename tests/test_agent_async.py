"""The async faces with checkpoints on, against the real embedded Postgres.

`aask`, `astream` and `aresume` checkpoint in the same database as the store, from any event loop,
and share threads with the sync faces. A scripted fake chat model (langchain-core's
`FakeListChatModel`) and a scripted router drive the graph; the store, the checkpointer and the
database are real.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from ragtune.agent import Agent
from ragtune.errors import DatabaseError, InputError
from ragtune.graphs.checkpoint import APPLICATION_NAME, POOL_SIZE, open_checkpointer
from ragtune.tools.database import Database
from ragtune.tools.store import KnowledgeStore
from tests.test_graph import PARAGRAPHS, FlakyStore, ScriptedRouter, nodes

CONCURRENT = 50


@pytest.fixture
def store(fake_store: KnowledgeStore) -> KnowledgeStore:
    fake_store.add_texts([text for _, text in PARAGRAPHS.values()],
                         [{"source": key, "title": title}
                          for key, (title, _) in PARAGRAPHS.items()])
    return fake_store


def _agent(store: Any, responses: list[str], first: str = "retrieve", **kw: Any) -> Agent:
    return Agent(store=store, model=FakeListChatModel(responses=responses),
                 router=ScriptedRouter(first), checkpoint=True, read_first=False,
                 evidence_threshold=0.0, **kw)


def _connections(database: Database) -> int:
    with database.pool.connection() as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type ="
                           " 'client backend' AND datname = current_database()").fetchone()
    return int(row[0]) if row else 0


def test_fifty_concurrent_aask_with_checkpoints(store: KnowledgeStore, database: Database,
                                                collection_name: str) -> None:
    agent = _agent(store, ["London"])
    peak = [_connections(database)]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak.append(_connections(database))
            time.sleep(0.05)

    async def one(i: int) -> tuple[Any, float]:
        started = time.perf_counter()
        answer = await agent.aask("Where was Ada Lovelace born?",
                                  thread_id=f"{collection_name}-{i}" if i % 5 else None)
        return answer, time.perf_counter() - started

    async def main() -> list[tuple[Any, float]]:
        return await asyncio.gather(*(one(i) for i in range(CONCURRENT)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        results = asyncio.run(main())
    finally:
        done.set()
        sampler.join()
    latencies = sorted(seconds for _, seconds in results)
    assert [a.text for a, _ in results] == ["London"] * CONCURRENT
    assert all(nodes(a) == ["route", "retrieve", "check_evidence", "answer"] for a, _ in results)
    # Every threaded run left its final state in the checkpoints, readable by the sync face.
    graph = agent._compiled()
    for i in range(1, CONCURRENT, 5):
        state = graph.get_state({"configurable": {"thread_id": f"{collection_name}-{i}"}})
        assert state.values["answer"] == "London" and not state.next
    # Bounded: the store's pool plus the checkpointer's, whatever the concurrency.
    assert max(peak) <= database.pool.max_size + POOL_SIZE + 2
    print(f"\n{CONCURRENT} concurrent aask: p50 {statistics.median(latencies):.2f} s, "
          f"p95 {latencies[int(0.95 * (len(latencies) - 1))]:.2f} s, "
          f"peak connections {max(peak)}")
    agent.close()


def test_astream_with_checkpoints(store: KnowledgeStore, collection_name: str) -> None:
    agent = _agent(store, ["London"])
    thread = f"{collection_name}-stream"

    async def collect() -> list[Any]:
        return [event async for event in agent.astream("Where was Ada Lovelace born?",
                                                       thread_id=thread)]

    events = asyncio.run(collect())
    updates = [e.node for e in events if e.kind == "update"]
    assert updates == ["route", "retrieve", "check_evidence", "answer"]
    assert "".join(e.data for e in events if e.kind == "token" and e.node == "answer") == "London"
    state = agent._compiled().get_state({"configurable": {"thread_id": thread}})
    assert state.values["answer"] == "London"
    agent.close()


def test_threads_are_shared_by_the_sync_and_async_faces_across_event_loops(
        store: KnowledgeStore, collection_name: str) -> None:
    agent = _agent(store, ["London", "River Thames", "1811"])
    thread = f"{collection_name}-turns"
    first = agent.ask("Where was Ada Lovelace born?", thread_id=thread)
    second = asyncio.run(agent.aask("Which river flows through London?", thread_id=thread))
    third = asyncio.run(agent.aask("When was the University of Oslo founded?",
                                   thread_id=thread))  # a second event loop
    assert (first.turn, second.turn, third.turn) == (1, 2, 3)
    assert [a.text for a in (first, second, third)] == ["London", "River Thames", "1811"]
    # Each turn starts from a clean slate: its own steps and trace, not the thread's sum.
    assert second.steps == first.steps and nodes(second) == nodes(first)
    history = agent._compiled().get_state({"configurable": {"thread_id": thread}}).values[
        "history"]
    assert [t["answer"] for t in history] == ["London", "River Thames", "1811"]
    agent.close()


def test_aresume_finishes_an_interrupted_run(store: KnowledgeStore,
                                             collection_name: str) -> None:
    flaky = FlakyStore(store)
    script = ["1. In which city was Ada Lovelace born?\n2. Which river flows through #1?",
              "London", "River Thames", "River Thames"]
    agent = Agent(store=flaky, model=FakeListChatModel(responses=script),  # type: ignore[arg-type]
                  router=ScriptedRouter("decompose"), checkpoint=True, read_first=False)
    thread = f"{collection_name}-aresume"
    flaky.down = True
    with pytest.raises(DatabaseError):
        asyncio.run(agent.aask("Which river flows through the city where Ada Lovelace was born?",
                               thread_id=thread))
    assert agent.pending(thread)
    flaky.down = False
    answer = asyncio.run(agent.aresume(thread))
    assert answer.text == "River Thames"
    assert not agent.pending(thread)
    with pytest.raises(InputError, match="no interrupted run"):
        asyncio.run(agent.aresume(thread))
    agent.close()


def test_checkpointer_survives_dropped_connections(database: Database) -> None:
    saver = open_checkpointer(database)
    config = {"configurable": {"thread_id": "dropped-connections", "checkpoint_ns": ""}}
    assert saver.get_tuple(config) is None
    with database.pool.connection() as conn:
        killed = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                              " WHERE application_name = %s", (APPLICATION_NAME,)).fetchone()
        conn.commit()
    assert killed is not None and killed[0] >= 1
    # Idle connections that were killed fail on first use; the retry takes a fresh one.
    assert saver.get_tuple(config) is None
    assert open_checkpointer(database) is saver


def test_checkpointer_outage_is_a_database_error(tmp_path: Any) -> None:
    from ragtune.tools.embedded_server import _pgserver, _stop_server

    db = Database.open(home=tmp_path / "home")
    try:
        saver = open_checkpointer(db)
        config = {"configurable": {"thread_id": "outage", "checkpoint_ns": ""}}
        assert saver.get_tuple(config) is None
        with _pgserver().PostgresServer._lock:
            assert _stop_server(db.server.pgdata)  # type: ignore[union-attr]
        started = time.monotonic()
        with pytest.raises(DatabaseError, match="read a checkpoint after 3 attempts"):
            saver.get_tuple(config)
        assert time.monotonic() - started < 30
    finally:
        db.close()
