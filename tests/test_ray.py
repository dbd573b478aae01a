"""The Ray engine: `ingest --engine ray` and `bench qa --engine ray` against the local paths.

One local Ray cluster (2 CPUs, no dashboard, logs in Ray's own temporary folder) serves the whole
module; the code under test finds it connected and uses it, as it would a notebook's. Ingestion
runs the real embedder on the workers and the real embedded Postgres; `bench qa` runs the scripted
chat model of `tests/test_evaluation.py` on the toy HotpotQA split, in Ray actors that open their
own connection to the same database. Starting actors costs seconds on two cores, so each test
starts as few Ray Data runs as it can. A missing Ray is simulated with `sys.modules["ray"] = None`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ragtune.cli import main
from ragtune.evaluation.qa import run_qa_bench
from ragtune.evaluation.strategies import STRATEGIES, StrategyModels
from ragtune.tools.ingest import ingest_paths
from ragtune.tools.store import KnowledgeStore
from tests.conftest import REPO_ROOT, ragtune_cmd
from tests.test_evaluation import AnswerIfPresent, toy_config

CHUNKING = {"chunk_size": 200, "chunk_overlap": 20}
TIMING_FIELDS = ("latency_s", "cpu_s")


@pytest.fixture(scope="module")
def ray_local(database: Any) -> Iterator[Any]:
    """A local 2-CPU Ray cluster for the module; workers can import `tests` (for the factory)."""
    ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'ragtune[ray]'")
    from ragtune.tools.ray_cluster import quiet_ray_data

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}})
    quiet_ray_data()
    yield ray
    ray.shutdown()


def write_corpus(folder: Path, sources: int = 12) -> Path:
    """A JSONL corpus whose records chunk into one to four chunks each (chunk size 200)."""
    topics = ["river", "castle", "violin", "harbor", "orchard", "lantern", "engine", "quantum"]
    lines = []
    for i in range(sources):
        sentences = [f"The {topics[(i + j) % len(topics)]} of record {i} has property {j}, "
                     f"noted in volume {i * 7 + j} of the survey." for j in range(1 + 3 * (i % 4))]
        lines.append(json.dumps({"id": f"doc-{i}", "title": f"Record {i}",
                                 "text": " ".join(sentences), "metadata": {"n": i}}))
    path = folder / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def table_rows(store: KnowledgeStore) -> dict[str, tuple[Any, ...]]:
    """Every row of a collection by id: (source, chunk_index, title, content, metadata, vector)."""
    from psycopg import sql

    with store.database.pool.connection() as conn:
        rows = conn.execute(sql.SQL(
            "SELECT id, source, chunk_index, title, content, metadata, embedding::text FROM {}"
        ).format(sql.Identifier(store.table))).fetchall()
    return {r[0]: (r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows}


def counts(summary: Any) -> dict[str, Any]:
    """A summary without its timing."""
    return {k: v for k, v in summary.to_json().items() if k != "seconds"}


def cosine(a: list[float], b: list[float]) -> float:
    import numpy as np

    x, y = np.asarray(a), np.asarray(b)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def ingest_locally(database: Any, embedder: Any, name: str, corpus: Path
                   ) -> tuple[Any, dict[str, tuple[Any, ...]]]:
    """Ingest `corpus` into collection `name` in this process; return the summary and rows."""
    store = KnowledgeStore(database, embedder, name)
    summary = ingest_paths(store, [corpus], **CHUNKING)
    rows = table_rows(store)
    store.delete_collection()
    assert summary.chunks > summary.documents == 12  # several sources have several chunks
    return summary, rows


def refuse_driver_embedding(monkeypatch: pytest.MonkeyPatch, embedder: Any) -> None:
    """Make the driver's embedder fail: every vector must then come from the Ray workers."""
    def refuse(texts: list[str]) -> Any:
        raise AssertionError(f"the driver embedded {len(texts)} texts")

    monkeypatch.setattr(embedder, "embed_documents_array", refuse)


def assert_same_rows(got: dict[str, tuple[Any, ...]], want: dict[str, tuple[Any, ...]]) -> None:
    """The same ids, sources, chunk indexes, titles, texts and metadata; vectors within 1e-4."""
    assert set(got) == set(want)
    for cid, row in want.items():
        assert got[cid][:5] == row[:5]
        assert cosine(got[cid][5], row[5]) > 0.9999


def test_an_interrupted_ray_ingest_reruns_to_what_one_process_writes(
        ray_local: Any, database: Any, embedder: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after its first batch, re-run: the rows and counts of a single-process ingest."""
    from ragtune.tools.ray_ingest import ingest_paths_ray

    corpus = write_corpus(tmp_path)
    name = f"test_{uuid.uuid4().hex[:12]}"
    local, expected = ingest_locally(database, embedder, name, corpus)
    refuse_driver_embedding(monkeypatch, embedder)
    store = KnowledgeStore(database, embedder, name)  # the same name, so the same ids
    seen: list[dict[str, Any]] = []

    def stop_after_first_batch(summary: Any) -> None:
        seen.append(counts(summary))
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            ingest_paths_ray(store, [corpus], workers=2, batch_chunks=8,
                             on_batch=stop_after_first_batch, **CHUNKING)
        first, (cut,) = table_rows(store), seen
        assert 0 < cut["new"] < 12 and len(first) == cut["chunks_written"]
        rerun = ingest_paths_ray(store, [corpus], workers=2, batch_chunks=8, **CHUNKING)
        rows = table_rows(store)
        assert_same_rows(rows, expected)  # all there, once each
        assert all(rows[cid] == row for cid, row in first.items())  # committed rows kept as is
        assert (rerun.documents, rerun.chunks) == (local.documents, local.chunks)
        assert (rerun.unchanged, rerun.new + cut["new"]) == (cut["new"], local.new)
        assert rerun.chunks_written + cut["chunks_written"] == local.chunks_written
        again = ingest_paths_ray(store, [corpus], workers=2, **CHUNKING)  # starts no Ray run
        assert (again.new, again.unchanged, again.chunks_written) == (0, 12, 0)
        assert len(table_rows(store)) == local.chunks
    finally:
        store.delete_collection()


@pytest.mark.slow
def test_a_fresh_ray_ingest_has_the_single_process_counts(
        ray_local: Any, database: Any, embedder: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ragtune.tools.ray_ingest import ingest_paths_ray

    corpus = write_corpus(tmp_path)
    name = f"test_{uuid.uuid4().hex[:12]}"
    local, expected = ingest_locally(database, embedder, name, corpus)
    refuse_driver_embedding(monkeypatch, embedder)
    store = KnowledgeStore(database, embedder, name)
    try:
        remote = ingest_paths_ray(store, [corpus], workers=2, window_chunks=10, **CHUNKING)
        assert counts(remote) == counts(local)  # over several windows, so several Ray Data runs
        assert_same_rows(table_rows(store), expected)
    finally:
        store.delete_collection()


def test_ray_engine_refuses_bad_requests_clearly(
        ray_local: Any, database: Any, embedder: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from ragtune.errors import ConfigError
    from ragtune.tools.ray_ingest import ingest_paths_ray

    corpus = write_corpus(tmp_path, sources=2)
    store = KnowledgeStore(database, embedder, f"test_{uuid.uuid4().hex[:12]}")
    try:
        with pytest.raises(ConfigError, match="more than the Ray cluster's 2 CPUs"):
            ingest_paths_ray(store, [corpus], workers=3)
        assert store.count() == 0
    finally:
        store.delete_collection()
    fake = KnowledgeStore(database, DeterministicFakeEmbedding(size=8),
                          f"test_{uuid.uuid4().hex[:12]}")
    try:
        with pytest.raises(ConfigError, match="local sentence-transformers model"):
            ingest_paths_ray(fake, [corpus])
    finally:
        fake.delete_collection()
    for argv, message in [
        (["ingest", str(corpus), "--engine", "ray", "--workers", "0"], "at least 1"),
        (["ingest", str(corpus), "--engine", "ray", "--window-chunks", "0"], "at least 1"),
        (["ingest", str(corpus), "--address", "auto"], "--engine ray only"),
        (["ingest", str(corpus), "--window-chunks", "5"], "--engine ray only"),
        (["bench", "qa", "--dataset", "hotpotqa", "--split", "tune", "--out",
          str(tmp_path / "b"), "--address", "auto"], "--engine ray only"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["ingest", "{corpus}", "--engine", "ray"],
                                     ["bench", "qa", "--dataset", "hotpotqa", "--split", "tune",
                                      "--out", "{out}", "--engine", "ray"]])
def test_a_missing_ray_is_a_config_error_naming_the_install(
        command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    corpus = write_corpus(tmp_path, sources=1)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    argv = [a.format(corpus=corpus, out=tmp_path / "out") for a in command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pip install 'ragtune[ray]'" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def scripted_worker_models(collection: str, answers: list[str]
                           ) -> tuple[StrategyModels, Callable[[], None]]:
    """The scripted models of `tests/test_evaluation.py`, on their own database connection."""
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from ragtune.agent import Agent
    from ragtune.agents.router import load_router
    from ragtune.tools.database import Database

    db = Database.open()
    store = KnowledgeStore(db, DeterministicFakeEmbedding(size=32), collection, create=False)
    model = AnswerIfPresent(answers=answers)

    def agent_factory(router: Any) -> Any:
        return Agent(store=store, model=model, specialist_model=model, checkpoint=False,
                     router=router or load_router("rules"))

    return StrategyModels(store=store, chat_model=model, reader_model=model,
                          specialist_model=model, agent_factory=agent_factory), db.close


def test_bench_qa_on_ray_gives_the_local_results(ray_local: Any, fake_store: Any,
                                                 tmp_path: Path) -> None:
    from ragtune.evaluation.datasets import load_split
    from ragtune.tools.ingest import ingest_documents
    from ragtune.tools.loaders.document import SourceDocument

    questions = load_split("hotpotqa", "tune", limit=2, folder=toy_config(out_dir=tmp_path)
                           .data_dir)
    paragraphs = {(t, x) for q in questions for t, x in q.paragraphs}
    ingest_documents(fake_store, [SourceDocument(source=f"p:{t}", text=x, title=t)
                                  for t, x in sorted(paragraphs)])
    factory = functools.partial(scripted_worker_models, fake_store.collection,
                                [q.answer for q in questions])
    models, release = factory()
    try:
        local = run_qa_bench(toy_config(limit=2, out_dir=tmp_path / "local", progress=False),
                             models=models)
    finally:
        release()
    remote = run_qa_bench(toy_config(limit=2, out_dir=tmp_path / "ray", progress=False,
                                     engine="ray", workers=2),
                          models=models, worker_models=factory)

    def predictions(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
        lines = Path(report["outputs"]["predictions"]).read_text().splitlines()
        records = [json.loads(line) for line in lines]
        return {(r["strategy"], r["id"]): {k: v for k, v in r.items() if k not in TIMING_FIELDS}
                for r in records}

    got, want = predictions(remote), predictions(local)
    assert len(want) == 2 * len(STRATEGIES) and got == want
    assert not any("error" in r for r in got.values())
    for name in STRATEGIES:
        for key in ("em", "f1", "model_calls", "steps", "questions", "errors"):
            assert remote["strategies"][name].get(key) == local["strategies"][name].get(key)


@pytest.mark.slow
def test_a_killed_cli_ray_ingest_reruns_without_duplicates(
        ray_local: Any, database: Any, embedder: Any, cli_env: dict[str, str],
        tmp_path: Path) -> None:
    """SIGKILL `ragtune ingest --engine ray` on the module's cluster once rows are committed.

    Two windows: the first is written, then the kill lands while the second is being embedded
    (a Ray Data run takes seconds), so the re-run has both stored and missing sources to handle.
    """
    corpus = write_corpus(tmp_path, sources=60)
    name = f"test_{uuid.uuid4().hex[:12]}"
    address = ray_local.get_runtime_context().gcs_address
    argv = ragtune_cmd("ingest", str(corpus), "-c", name, "--engine", "ray", "--address",
                       address, "--workers", "2", "--chunk-size", "200", "--window-chunks",
                       "80", "--json")
    store = KnowledgeStore(database, embedder, name)
    try:
        proc = subprocess.Popen(argv, env=cli_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while store.count() == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        before = store.count()
        done = subprocess.run(argv, env=cli_env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        rows = table_rows(store)
        assert len(rows) == summary["chunks"] and summary["documents"] == 60
        assert 0 < before < len(rows)  # killed mid-run, not before or after it
        assert summary["chunks_written"] == len(rows) - before
        assert summary["new"] + summary["unchanged"] == 60
    finally:
        store.delete_collection()
