"""The `ragtune` CLI as a user runs it: subprocesses on the real database and real embedder.

Checks exit codes, JSON shapes and that errors are one clear line, never a stack trace.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ragtune.errors import ConfigError, DatabaseError, InputError
from tests.conftest import ragtune_cmd

TIMEOUT = 180


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ragtune_cmd(*args), env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


def assert_clean_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    rows = [
        {"id": "curie", "title": "Marie Curie", "text": "Marie Curie was born in Warsaw.",
         "metadata": {"year": 1867}},
        {"id": "warsaw", "title": "Warsaw", "text": "Warsaw lies on the Vistula river.",
         "metadata": {"year": 1300}},
        {"id": "thames", "title": "River Thames", "text": "The Thames flows through London.",
         "metadata": {"year": 0}},
    ]
    (folder / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "notes.md").write_text("# Notes\n\nThe Vistula is the longest river in Poland.\n")
    return folder


def test_ingest_search_round_trip(cli_env: dict[str, str], corpus: Path,
                                  collection_name: str, tmp_path: Path) -> None:
    proc = run(cli_env, "ingest", str(corpus), "-c", collection_name, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    keys = {"documents", "chunks", "new", "unchanged", "replaced", "seconds", "skipped"}
    assert keys <= set(summary)
    assert (summary["documents"], summary["new"]) == (4, 4)

    again = json.loads(run(cli_env, "ingest", str(corpus), "-c", collection_name, "--json").stdout)
    assert (again["new"], again["unchanged"], again["chunks_written"]) == (0, 4, 0)

    proc = run(cli_env, "search", "Where was Marie Curie born?", "-c", collection_name, "-k", "2",
               "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["results"][0]["title"] == "Marie Curie"
    assert set(result["results"][0]) == {"id", "score", "title", "source", "text"}

    proc = run(cli_env, "search", "river", "-c", collection_name, "--mode", "text",
               "--filter", '{"year": {"$gte": 1000}}', "--json")
    assert [r["title"] for r in json.loads(proc.stdout)["results"]] == ["Warsaw"]

    queries = tmp_path / "q.jsonl"
    queries.write_text('{"id": "q1", "question": "Curie birthplace"}\n'
                       '{"id": "q2", "question": "river in London"}\n')
    proc = run(cli_env, "search", "--queries", str(queries), "-c", collection_name, "-k", "3")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["id"] for line in lines] == ["q1", "q2"]
    assert all(len(line["results"]) == 3 for line in lines)
    assert lines[1]["results"][0]["title"] == "River Thames"

    proc = run(cli_env, "collections", "--json")
    assert any(c["name"] == collection_name and c["chunks"] == 4 for c in json.loads(proc.stdout))
    assert run(cli_env, "collections", "drop", collection_name).returncode == 0


def test_ingest_bad_inputs(cli_env: dict[str, str], tmp_path: Path, collection_name: str) -> None:
    assert_clean_error(run(cli_env, "ingest", str(tmp_path / "missing.txt"), "-c",
                           collection_name), InputError.exit_code, "missing.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_error(run(cli_env, "ingest", str(empty), "-c", collection_name),
                       InputError.exit_code, "empty")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n{"text": "also fine"}\n')
    assert_clean_error(run(cli_env, "ingest", str(bad), "-c", collection_name),
                       InputError.exit_code, "bad.jsonl", "2")
    proc = run(cli_env, "ingest", str(bad), "-c", collection_name, "--skip-bad", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["documents"] == 2 and len(summary["skipped"]) == 1
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01\x02binary\x00")
    assert_clean_error(run(cli_env, "ingest", str(binary), "-c", collection_name),
                       InputError.exit_code, "blob.txt")
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n\t \n")
    assert_clean_error(run(cli_env, "ingest", str(blank), "-c", collection_name),
                       InputError.exit_code, "blank.txt")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))
    assert_clean_error(run(cli_env, "ingest", str(latin), "-c", collection_name),
                       InputError.exit_code, "latin1.txt", "UTF-8")
    huge = tmp_path / "huge.txt"
    with huge.open("wb") as out:
        out.write(b"word " * (10 * 1024 * 1024))  # 50 MB
    assert_clean_error(run(cli_env, "ingest", str(huge), "-c", collection_name),
                       InputError.exit_code, "huge.txt")
    assert_clean_error(run(cli_env, "ingest", str(bad), "-c", collection_name,
                           "--chunk-size", "100", "--chunk-overlap", "200"),
                       ConfigError.exit_code, "chunk-overlap")
    run(cli_env, "collections", "drop", collection_name)


def test_search_bad_inputs(cli_env: dict[str, str], tmp_path: Path) -> None:
    assert_clean_error(run(cli_env, "search", "x", "--filter", '{"a": {"$where": "1"}}'),
                       InputError.exit_code, "$where")
    assert_clean_error(run(cli_env, "search", "x", "--filter", "{oops"),
                       InputError.exit_code, "JSON")
    assert_clean_error(run(cli_env, "search", "x", "-c", "no_such_collection_here"),
                       ConfigError.exit_code, "no_such_collection_here")
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"id": 1, "question": "ok"}\n{"id": 2}\n')
    assert_clean_error(run(cli_env, "search", "--queries", str(queries)),
                       InputError.exit_code, "q.jsonl:2")


def test_unreachable_database_and_unwritable_home(cli_env: dict[str, str],
                                                  tmp_path: Path) -> None:
    assert_clean_error(run(cli_env, "--database-url", "postgresql://u:pw@127.0.0.1:9/x",
                           "db"), DatabaseError.exit_code, "Cannot connect")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    env = {**cli_env, "RAGTUNE_HOME": str(blocker / "home")}
    assert_clean_error(run(env, "db"), ConfigError.exit_code, "not writable")
