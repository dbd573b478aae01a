"""The ingestion pipeline on the real database: idempotence, replacement, kills and concurrency.

Uses the real loaders and Postgres with langchain-core's `DeterministicFakeEmbedding` (ingestion
logic does not depend on what the vectors mean), except the CLI-level concurrency test, which runs
two real `ragtune ingest` processes with the real embedder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ragtune.errors import ConfigError, InputError
from ragtune.tools.ingest import ingest_paths
from ragtune.tools.store import KnowledgeStore
from tests.conftest import ragtune_cmd

KILL_SCRIPT = """
import os, signal, sys
from langchain_core.embeddings import DeterministicFakeEmbedding
from ragtune.tools.database import Database
from ragtune.tools.ingest import ingest_paths
from ragtune.tools.store import KnowledgeStore

collection, path, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = KnowledgeStore(Database.open(), DeterministicFakeEmbedding(size=32), collection)

def on_batch(summary):
    print(summary.documents, flush=True)
    if summary.documents >= kill_after:
        os.kill(os.getpid(), signal.SIGKILL)

ingest_paths(store, [path], batch_chunks=10, on_batch=on_batch)
"""


def _write_jsonl(path: Path, n: int, prefix: str = "doc") -> Path:
    with path.open("w") as out:
        for i in range(n):
            out.write(json.dumps({"id": f"{prefix}{i}", "title": f"T{i}",
                                  "text": f"Paragraph number {i} about topic {i % 7}."}) + "\n")
    return path


def test_reingest_adds_nothing_and_changes_replace(fake_store: KnowledgeStore,
                                                   tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    files = {"a.txt": "apples " * 400, "b.md": "# Bananas\n\nYellow.", "c.txt": "Cherry"}
    for name, text in files.items():
        (folder / name).write_text(text)
    first = ingest_paths(fake_store, [folder], chunk_size=500, chunk_overlap=50)
    assert (first.documents, first.new, first.unchanged, first.replaced) == (3, 3, 0, 0)
    assert first.chunks > 3 and first.chunks_written == fake_store.count()
    total = fake_store.count()

    again = ingest_paths(fake_store, [folder], chunk_size=500, chunk_overlap=50)
    assert (again.new, again.unchanged, again.replaced, again.chunks_written) == (0, 3, 0, 0)
    assert fake_store.count() == total

    (folder / "c.txt").write_text("Cherry, changed")
    changed = ingest_paths(fake_store, [folder], chunk_size=500, chunk_overlap=50)
    assert (changed.new, changed.unchanged, changed.replaced) == (0, 2, 1)
    assert (changed.chunks_written, changed.chunks_deleted) == (1, 1)
    assert fake_store.count() == total
    assert [h.text for h in fake_store.retrieve("cherry", 5, mode="text")] == ["Cherry, changed"]


def test_bad_chunk_settings_fail_before_work(fake_store: KnowledgeStore, tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", 2)
    with pytest.raises(ConfigError, match="chunk-overlap"):
        ingest_paths(fake_store, [path], chunk_size=100, chunk_overlap=100)
    assert fake_store.count() == 0


def test_bad_line_stops_or_is_skipped(fake_store: KnowledgeStore, tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", 3)
    with path.open("a") as out:
        out.write("{not json\n")
    with pytest.raises(InputError, match=r"d\.jsonl.*4"):
        ingest_paths(fake_store, [path])
    summary = ingest_paths(fake_store, [path], skip_bad=True)
    assert summary.documents == 3 and len(summary.skipped) == 1
    assert "d.jsonl" in summary.skipped[0]
    assert fake_store.count() == 3


def test_killed_ingest_then_rerun_completes_without_duplicates(
    database, collection_name: str, tmp_path: Path, cli_env: dict[str, str]  # type: ignore[no-untyped-def]
) -> None:
    from langchain_core.embeddings import DeterministicFakeEmbedding

    path = _write_jsonl(tmp_path / "many.jsonl", 120)
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, collection_name, str(path), "40"],
                          env=cli_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    store = KnowledgeStore(database, DeterministicFakeEmbedding(size=32), collection_name)
    try:
        committed = store.count()
        assert 40 <= committed < 120
        summary = ingest_paths(store, [path], batch_chunks=10)
        assert summary.unchanged == committed
        assert summary.new == 120 - committed
        assert store.count() == 120
        with database.pool.connection() as conn:
            dupes = conn.execute(
                f'SELECT count(*) - count(DISTINCT source) FROM "{store.table}"').fetchone()
        assert dupes == (0,)
    finally:
        store.delete_collection()


def test_two_concurrent_writers(database, embedder, collection_name: str, tmp_path: Path,  # type: ignore[no-untyped-def]
                                cli_env: dict[str, str]) -> None:
    """Two `ragtune ingest` processes on overlapping input end with each chunk stored once."""
    first = _write_jsonl(tmp_path / "one.jsonl", 60, prefix="shared")
    second = tmp_path / "two.jsonl"
    second.write_text(first.read_text() + "".join(
        json.dumps({"id": f"extra{i}", "text": f"Extra paragraph {i}."}) + "\n" for i in range(20)))
    procs = [subprocess.Popen(ragtune_cmd("ingest", str(p), "-c", collection_name, "--json"),
                              env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for p in (first, second)]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert json.loads(out)["documents"] in (60, 80)
    store = KnowledgeStore(database, embedder, collection_name)
    try:
        assert store.count() == 80
        written = sum(json.loads(out)["chunks_written"] for out, _ in results)
        assert written == 80
    finally:
        store.delete_collection()
