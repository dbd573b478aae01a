"""Benchmark `ragtune serve`: replicas over one PostgreSQL, driven with langgraph-sdk.

Three phases, each on real `ragtune serve` processes (subprocesses on free loopback ports) over one
database (a private embedded server, or `--database-url`):

1. **Scripted model, 2 replicas.** `--runs` runs at once (default 50), each on its own thread,
   the thread created on one replica and its run sent to the other. The graph is
   `tests/serve_graph.py` (the real orchestrator, retrieval and checkpointer; a scripted model and
   fake embeddings), so the figures measure the server, not generation. Counted from the database
   afterwards: successes, lost runs (no successful record), duplicated runs (more than one record
   for a thread), p50/p95 client latency, and the peak of client connections to the database
   (`pg_stat_activity`, sampled every 50 ms, the benchmark's own one subtracted).
2. **Local model.** `--local-runs` runs (default 4, split over the replicas) of the `ragtune` graph
   on `local:gemma-3-270m` over the built-in sample corpus (real embedder, classifier router).
3. **A replica killed mid-run.** A third replica whose scripted model takes `--kill-delay` seconds
   per call gets a streamed run and is SIGKILLed one second in: what the client sees, and what the
   surviving replica then reports for that run and thread.

Prints a table and writes JSON (`bench/results/serve.json`). Server logs and the embedded database
go to a temporary folder, removed at the end.

    python bench/serve.py
    python bench/serve.py --runs 100 --local-runs 0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from graph import percentile  # type: ignore[import-not-found]

REPO = Path(__file__).resolve().parents[1]
SCRIPTED_GRAPH = REPO / "tests" / "serve_graph.py"
SAMPLE = REPO / "src" / "ragtune" / "data" / "sample.jsonl"
PARAGRAPHS = [
    ("Ada Lovelace", "Ada Lovelace was an English mathematician born in London."),
    ("River Thames", "The River Thames flows through London."),
    ("University of Oslo", "The University of Oslo was founded in 1811."),
]
LOCAL_QUESTIONS = [
    "Which river flows through the city where Ada Lovelace was born?",
    "Who was born first, Charles Babbage or Lord Byron?",
    "Which river flows through the city where Marie Curie was born?",
    "Where was Ada Lovelace born?",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replica:
    """One `ragtune serve` subprocess."""

    def __init__(self, name: str, folder: Path, graphs: Path, env: dict[str, str]) -> None:
        self.name, self.port = name, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / f"{name}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ragtune.cli", "serve", "--port", str(self.port),
             "--graphs", str(graphs)],
            cwd=folder, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"replica {self.name} did not start:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


class ConnectionSampler:
    """Samples the database's client connections every 50 ms (less the sampler's own)."""

    def __init__(self, database: Any) -> None:
        self.database, self.peak, self._done = database, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.database.pool.connection() as conn:
            while not self._done.is_set():
                row = conn.execute("SELECT count(*) - 1 FROM pg_stat_activity WHERE backend_type"
                                   " = 'client backend' AND datname = current_database()"
                                   ).fetchone()
                self.peak = max(self.peak, int(row[0]) if row else 0)
                time.sleep(0.05)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


async def _one_run(clients: list[Any], i: int, graph: str, question: str,
                   context: dict[str, Any]) -> dict[str, Any]:
    """Create a thread on one replica, run the question on the other; time it."""
    started = time.perf_counter()
    try:
        thread = (await clients[i % 2].threads.create())["thread_id"]
        out = await clients[(i + 1) % 2].runs.wait(thread, graph, input={"question": question},
                                                    context=context)
        return {"thread": thread, "question": question,
                "latency_s": time.perf_counter() - started,
                "answer": out.get("answer") if isinstance(out, dict) else None, "error": None}
    except Exception as exc:  # a failed request is a result here, counted below
        return {"thread": None, "question": question, "latency_s": time.perf_counter() - started,
                "answer": None, "error": f"{type(exc).__name__}: {exc}"[:200]}


def _concurrent(urls: list[str], n: int, graph: str, questions: list[str],
                context: dict[str, Any]) -> tuple[list[dict[str, Any]], float]:
    from langgraph_sdk import get_client

    async def main() -> list[dict[str, Any]]:
        clients = [get_client(url=u, timeout=600) for u in urls]
        return await asyncio.gather(*(_one_run(clients, i, graph, questions[i % len(questions)],
                                               context) for i in range(n)))

    started = time.perf_counter()
    results = asyncio.run(main())
    return results, time.perf_counter() - started


def _records(database: Any, threads: list[str]) -> dict[str, list[tuple[str, str | None]]]:
    """The runs the database holds for `threads`: thread -> [(status, answer)]."""
    found: dict[str, list[tuple[str, str | None]]] = {t: [] for t in threads}
    with database.pool.connection() as conn:
        for thread, status, answer in conn.execute(
                "SELECT thread_id, status, output->>'answer' FROM runs WHERE thread_id = ANY(%s)",
                (threads,)):
            found[thread].append((status, answer))
    return found


def _summary(results: list[dict[str, Any]], wall: float, peak: int, database: Any,
             expected: str | None) -> dict[str, Any]:
    threads = [r["thread"] for r in results if r["thread"]]
    records = _records(database, threads)
    latencies = [r["latency_s"] for r in results if r["error"] is None]
    return {
        "runs": len(results),
        "successes": sum(1 for t in threads for status, _ in records[t] if status == "success"),
        "client_errors": sum(r["error"] is not None for r in results),
        "lost": len(results) - sum(any(s == "success" for s, _ in records[t]) for t in threads),
        "duplicated": sum(len(records[t]) > 1 for t in threads),
        "wrong_answers": 0 if expected is None else
        sum(r["answer"] != expected for r in results if r["error"] is None),
        "p50_s": percentile(latencies, 0.5), "p95_s": percentile(latencies, 0.95),
        "wall_s": wall, "peak_connections": peak,
        "answers": sorted({f"{r['question']} -> {r['answer']}" for r in results})[:8],
        "errors": sorted({r["error"] for r in results if r["error"]})[:3],
    }


def _kill_mid_run(replica: Replica, survivor: Replica, collection: str) -> dict[str, Any]:
    """Stream a slow run from `replica`, SIGKILL it 1 s in; report both sides."""
    from langgraph_sdk import get_sync_client

    client, other = get_sync_client(url=replica.url), get_sync_client(url=survivor.url)
    thread = client.threads.create()["thread_id"]
    seen: list[str] = []
    outcome = "stream ended normally"
    killer = threading.Timer(1.0, replica.process.send_signal, (signal.SIGKILL,))
    started = time.perf_counter()
    killer.start()
    try:
        for chunk in client.runs.stream(thread, "scripted", input={"question": "Where was Ada "
                                        "Lovelace born?"}, context={"collection": collection},
                                        stream_mode=["updates"]):
            seen.append(chunk.event)
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"[:200]
    elapsed = time.perf_counter() - started
    replica.process.wait(10)
    runs = other.runs.list(thread)
    after = {"run_status_on_survivor": [r["status"] for r in runs],
             "thread_status_on_survivor": other.threads.get(thread)["status"]}
    time.sleep(3)
    after["run_status_3s_later"] = [r["status"] for r in other.runs.list(thread)]
    try:
        retry = other.runs.wait(thread, "scripted", input={"question": "Where was Ada Lovelace "
                                "born?"}, context={"collection": collection})
        after["rerun_on_survivor"] = f"answer {retry.get('answer')!r}"
    except Exception as exc:
        after["rerun_on_survivor"] = f"{type(exc).__name__}: {exc}"[:200]
    return {"events_before_kill": seen, "client_saw": outcome,
            "client_saw_after_s": round(elapsed, 2), **after}


def main() -> None:
    """Run the three phases; print the table and write JSON."""
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from ragtune.agents.models import quiet_model_libraries
    from ragtune.tools.database import Database
    from ragtune.tools.embeddings import load_embeddings
    from ragtune.tools.ingest import ingest_paths
    from ragtune.tools.store import KnowledgeStore

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--local-runs", type=int, default=4)
    parser.add_argument("--kill-delay", type=float, default=5.0)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve.json")
    args = parser.parse_args()
    quiet_model_libraries()

    folder = Path(tempfile.mkdtemp(prefix="ragtune-bench-serve-"))
    home = folder / "home"
    env = dict(os.environ, RAGTUNE_HOME=str(home), PYTHONUNBUFFERED="1", SERVE_TEST_DELAY_S="0")
    env.pop("RAGTUNE_API_KEY", None)
    if args.database_url:
        env["RAGTUNE_DATABASE_URL"] = args.database_url
    graphs = folder / "graphs.json"
    graphs.write_text(json.dumps({"graphs": {
        "scripted": f"{SCRIPTED_GRAPH}:graph", "ragtune": "ragtune.graphs.orchestrator:graph"}}))
    database = Database.open(args.database_url, home=home)
    fake = KnowledgeStore(database, DeterministicFakeEmbedding(size=32),
                          f"bench_serve_{uuid.uuid4().hex[:8]}")
    fake.add_texts([t for _, t in PARAGRAPHS], [{"source": s, "title": s} for s, _ in PARAGRAPHS])
    replicas = [Replica(n, folder, graphs, env) for n in ("a", "b")]
    report: dict[str, Any] = {"replicas": 2}
    try:
        for r in replicas:
            r.wait_ready()
        urls = [r.url for r in replicas]
        context = {"collection": fake.collection}
        _concurrent(urls, 4, "scripted", ["Where was Ada Lovelace born?"], context)  # warm-up
        with ConnectionSampler(database) as sampler:
            results, wall = _concurrent(urls, args.runs, "scripted",
                                        ["Where was Ada Lovelace born?"], context)
        report["scripted"] = _summary(results, wall, sampler.peak, database, "London")

        if args.local_runs:
            corpus = KnowledgeStore(database, load_embeddings(),
                                    f"bench_serve_local_{uuid.uuid4().hex[:8]}")
            ingest_paths(corpus, [str(SAMPLE)])
            with ConnectionSampler(database) as sampler:
                results, wall = _concurrent(urls, args.local_runs, "ragtune", LOCAL_QUESTIONS,
                                            {"collection": corpus.collection})
            report["local"] = _summary(results, wall, sampler.peak, database, None)
            corpus.delete_collection()

        slow = Replica("slow", folder, graphs, env | {"SERVE_TEST_DELAY_S":
                                                      str(args.kill_delay)})
        slow.wait_ready()
        report["kill"] = _kill_mid_run(slow, replicas[0], fake.collection)
    finally:
        for r in replicas:
            r.stop()
        fake.delete_collection()
        database.close()
        shutil.rmtree(folder, ignore_errors=True)

    print(f"\n{args.runs} concurrent runs over 2 replicas (scripted model), then "
          f"{args.local_runs} on local:gemma-3-270m\n")
    print("| phase | runs | successes | lost | duplicated | client errors | wrong | p50 (s) |"
          " p95 (s) | wall (s) | peak db connections |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for phase in ("scripted", "local"):
        if phase in report:
            r = report[phase]
            print(f"| {phase} | {r['runs']} | {r['successes']} | {r['lost']} | {r['duplicated']} "
                  f"| {r['client_errors']} | {r['wrong_answers']} | {r['p50_s']:.2f} | "
                  f"{r['p95_s']:.2f} | {r['wall_s']:.2f} | {r['peak_connections']} |")
    print("\nreplica SIGKILLed 1 s into a streamed run:")
    for key, value in report["kill"].items():
        print(f"  {key}: {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


if __name__ == "__main__":
    main()
