"""Benchmark the agent's faces under concurrency, with checkpoints, on the real database.

Fifty questions at once through each face, against the same store in the same run:

- `aask` with a thread each (checkpointed: `PostgresCheckpointer`, async methods in worker threads),
- `aask` without threads (nothing checkpointed),
- `ask` with a thread each, from 50 OS threads (the sync face under the same load).

The model is langchain-core's `FakeListChatModel` and routing is the `rules` policy, so the figures
measure orchestration, retrieval and checkpointing rather than generation. The store uses the real
embedded PostgreSQL (or `--database-url`) with deterministic fake embeddings. Prints a table (the
async faces as ratios of the sync face's wall time) and writes JSON.

    python bench/async_agent.py                     # 50 concurrent, 3 rounds
    python bench/async_agent.py --concurrency 100 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from graph import percentile  # type: ignore[import-not-found]

REPO = Path(__file__).resolve().parents[1]
QUESTION = "Where was Ada Lovelace born?"
PARAGRAPHS = [
    ("Ada Lovelace", "Ada Lovelace was an English mathematician born in London."),
    ("River Thames", "The River Thames flows through London."),
    ("University of Oslo", "The University of Oslo was founded in 1811."),
]


class Sampler:
    """Samples the database's client connections every 50 ms while running."""

    def __init__(self, database: Any) -> None:
        self.database, self.peak, self._done = database, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            with self.database.pool.connection() as conn:
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type ="
                                   " 'client backend' AND datname = current_database()"
                                   ).fetchone()
            self.peak = max(self.peak, int(row[0]) if row else 0)
            time.sleep(0.05)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def run_face(agent: Any, face: str, n: int) -> tuple[list[float], float, list[str]]:
    """Ask `n` questions at once through `face`; return latencies, wall seconds and answers."""
    tag = uuid.uuid4().hex[:8]

    def sync_one(i: int) -> tuple[float, str]:
        started = time.perf_counter()
        answer = agent.ask(QUESTION, thread_id=f"bench-{tag}-{i}")
        return time.perf_counter() - started, answer.text

    async def async_one(i: int) -> tuple[float, str]:
        started = time.perf_counter()
        thread = f"bench-{tag}-{i}" if face == "aask, threads" else None
        answer = await agent.aask(QUESTION, thread_id=thread)
        return time.perf_counter() - started, answer.text

    async def async_all() -> list[tuple[float, str]]:
        return await asyncio.gather(*(async_one(i) for i in range(n)))

    started = time.perf_counter()
    if face == "ask, threads":
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(sync_one, range(n)))
    else:
        results = asyncio.run(async_all())
    wall = time.perf_counter() - started
    return [r[0] for r in results], wall, [r[1] for r in results]


def main() -> None:
    """Run every face `--rounds` times; print the table and write JSON."""
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from ragtune.agent import Agent
    from ragtune.graphs.checkpoint import POOL_SIZE
    from ragtune.tools.database import Database
    from ragtune.tools.store import KnowledgeStore

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "async_agent.json")
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="ragtune-bench-async-")
    database = Database.open(args.database_url, home=home)
    store = KnowledgeStore(database, DeterministicFakeEmbedding(size=32),
                           f"bench_async_{uuid.uuid4().hex[:8]}")
    try:
        store.add_texts([text for _, text in PARAGRAPHS],
                        [{"source": title, "title": title} for title, _ in PARAGRAPHS])
        agent = Agent(store=store, model=FakeListChatModel(responses=["London"]),
                      routing_policy="rules", read_first=False, evidence_threshold=0.0)
        faces = ["ask, threads", "aask, threads", "aask, no thread"]
        rows: dict[str, dict[str, Any]] = {}
        run_face(agent, "aask, threads", 2)  # warm-up: graphs compiled, pools open
        for face in faces:
            latencies: list[float] = []
            walls: list[float] = []
            peak = 0
            wrong = 0
            for _ in range(args.rounds):
                with Sampler(database) as sampler:
                    lat, wall, answers = run_face(agent, face, args.concurrency)
                latencies += lat
                walls.append(wall)
                peak = max(peak, sampler.peak)
                wrong += sum(a != "London" for a in answers)
            rows[face] = {"runs": len(latencies), "wrong": wrong,
                          "p50_s": percentile(latencies, 0.5), "p95_s": percentile(latencies, 0.95),
                          "wall_s": sum(walls) / len(walls), "peak_connections": peak}
        base = rows["ask, threads"]["wall_s"]
        for row in rows.values():
            row["wall_vs_sync"] = row["wall_s"] / base
        agent.close()
    finally:
        store.delete_collection()
        database.close()
    limits = {"store_pool": database.pool.max_size, "checkpoint_pool": POOL_SIZE}
    print(f"\n{args.concurrency} concurrent questions x {args.rounds} rounds "
          f"(pool limits: store {limits['store_pool']}, checkpoints {limits['checkpoint_pool']})\n")
    print("| face | runs | wrong | p50 (s) | p95 (s) | wall per round (s) | wall vs sync |"
          " peak connections |")
    print("|---|---|---|---|---|---|---|---|")
    for face, r in rows.items():
        print(f"| {face} | {r['runs']} | {r['wrong']} | {r['p50_s']:.3f} | {r['p95_s']:.3f} | "
              f"{r['wall_s']:.3f} | {r['wall_vs_sync']:.2f} | {r['peak_connections']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"concurrency": args.concurrency, "rounds": args.rounds,
                                    "limits": limits, "faces": rows}, indent=2))
    print(f"\nwrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


if __name__ == "__main__":
    main()
