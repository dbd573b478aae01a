"""Hostile input: one clear line, the right exit code, and nothing good is lost.

Values PostgreSQL refuses (NUL characters, lone surrogates, NaN and Infinity in JSON, nesting far
too deep), absurd result counts, files that are not files (FIFOs, devices, folders) or cannot be
read, and a database that goes away mid-ingest. Loader and filter cases run in-process against the
real loaders and the real database; the CLI cases run `ragtune` as a user does, in subprocesses
(or in-process through `ragtune.cli.main` where no database is reached).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from ragtune.cli import main
from ragtune.errors import DatabaseError, FilterError, InputError
from ragtune.tools.database import connect
from ragtune.tools.filters import compile_filter, parse_filter
from ragtune.tools.ingest import ingest_documents, ingest_paths, make_splitter
from ragtune.tools.loaders import SourceDocument, iter_documents
from ragtune.tools.store import KnowledgeStore
from ragtune.tools.validation import MAX_JSON_DEPTH, MAX_K
from tests.conftest import ragtune_cmd
from tests.test_cli import assert_clean_error, run

DEEP = "[" * 200_000 + "]" * 200_000
HOSTILE_LINES = {
    "nul-text": ('{"id": "bad", "text": "a \\u0000 b"}', r'"text" contains a NUL character'),
    "nul-title": ('{"id": "bad", "title": "t\\u0000", "text": "ok"}',
                  r'"title" contains a NUL character'),
    "nul-id": ('{"id": "b\\u0000d", "text": "ok"}', r'"id" contains a NUL character'),
    "surrogate-text": ('{"id": "bad", "text": "lone \\ud800 here"}',
                       r'"text" contains a lone surrogate U\+D800'),
    "nul-metadata-key": ('{"id": "bad", "text": "ok", "metadata": {"k\\u0000": 1}}',
                         r"metadata: key 'k\\x00' contains a NUL character"),
    "surrogate-metadata": ('{"id": "bad", "text": "ok", "metadata": {"k": ["\\udfff"]}}',
                           r"metadata\['k'\]\[0\]: string contains a lone surrogate"),
    "nan-metadata": ('{"id": "bad", "text": "ok", "metadata": {"x": NaN}}',
                     r"metadata\['x'\]: NaN is not a JSON number"),
    "infinity-metadata": ('{"id": "bad", "text": "ok", "metadata": {"x": {"y": -Infinity}}}',
                          r"metadata\['x'\]\['y'\]: -Infinity is not a JSON number"),
    "deep-200k": ('{"id": "bad", "text": "ok", "metadata": {"x": ' + DEEP + "}}",
                  r"malformed JSON: nested too deeply"),
    "deep-over-limit": ('{"id": "bad", "text": "ok", "metadata": {"x": '
                        + "[" * 200 + "]" * 200 + "}}", r"nested deeper than 64 levels"),
    "huge-integer": ('{"id": "bad", "text": "ok", "metadata": {"x": ' + "9" * 5000 + "}}",
                     r"unreadable JSON: Exceeds the limit"),
}


def hostile_jsonl(path: Path, bad: str, good: int = 10, at: int = 4) -> Path:
    """Write `good` valid records with the `bad` line as line `at`."""
    lines = [json.dumps({"id": f"good{n}", "text": f"Good document {n} about rivers."})
             for n in range(good)]
    lines.insert(at - 1, bad)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def sources(store: KnowledgeStore) -> dict[str, int]:
    """Chunks per source in the store's table."""
    with store.database.pool.connection() as conn:
        rows = conn.execute(f'SELECT source, count(*) FROM "{store.table}" GROUP BY source')
        return dict(rows.fetchall())


# --- loaders: every value PostgreSQL refuses is rejected alone, at load time -----------------


@pytest.mark.parametrize("case", sorted(HOSTILE_LINES))
def test_hostile_jsonl_record_is_rejected_alone(tmp_path: Path, case: str) -> None:
    line, message = HOSTILE_LINES[case]
    path = hostile_jsonl(tmp_path / "docs.jsonl", line)

    with pytest.raises(InputError, match=rf"docs\.jsonl:4: .*{message}"):
        list(iter_documents([path]))

    skipped: list[str] = []
    docs = list(iter_documents([path], skip_bad=True, on_skip=skipped.append))
    assert [d.doc_id for d in docs] == [f"good{n}" for n in range(10)]
    assert len(skipped) == 1 and "docs.jsonl:4:" in skipped[0]


def test_hostile_first_line_does_not_hide_the_format(tmp_path: Path) -> None:
    """An unreadable first record is skipped like any other; the next one tells the format."""
    path = hostile_jsonl(tmp_path / "docs.jsonl", HOSTILE_LINES["deep-200k"][0], at=1)
    skipped: list[str] = []
    docs = list(iter_documents([path], skip_bad=True, on_skip=skipped.append))
    assert len(docs) == 10 and len(skipped) == 1 and "docs.jsonl:1:" in skipped[0]


def test_hostile_dataset_paragraph_and_text_file(tmp_path: Path) -> None:
    hotpot = tmp_path / "h.json"
    questions = [{"_id": "1", "context": [["Good", ["Fine text."]], ["Bad", ["x\u0000y"]]]},
                 {"_id": "2", "context": [["Other", ["Also fine."]]]}]
    hotpot.write_text(json.dumps(questions), encoding="utf-8")
    with pytest.raises(InputError, match=r"h\.json item 1: context\[2\] text contains a NUL"):
        list(iter_documents([hotpot]))
    skipped: list[str] = []
    docs = list(iter_documents([hotpot], skip_bad=True, on_skip=skipped.append))
    # The whole question is skipped, so its good paragraph does not claim its title either.
    assert [d.title for d in docs] == ["Other"] and len(skipped) == 1

    # A NUL past the binary sniff window still never reaches the database.
    late = tmp_path / "late.txt"
    late.write_bytes(b"words " * 3000 + b"\0 tail")
    with pytest.raises(InputError, match=r"late\.txt: \"text\" contains a NUL character"):
        list(iter_documents([late]))


def test_hostile_records_cost_no_good_document(fake_store: KnowledgeStore,
                                               tmp_path: Path) -> None:
    """All hostile lines in one file, one 256-chunk batch: the ten good documents are written."""
    path = tmp_path / "mixed.jsonl"
    bad = [line for line, _ in HOSTILE_LINES.values()]
    lines = []
    for n in range(10):  # good, bad, good, bad, ..., then the remaining bad lines
        lines += [json.dumps({"id": f"good{n}", "text": f"Good document {n}."}), bad[n]]
    path.write_text("\n".join(lines + bad[10:]) + "\n", encoding="utf-8")

    with pytest.raises(InputError, match=r"mixed\.jsonl:2: "):
        ingest_paths(fake_store, [path])
    assert fake_store.count() == 0  # nothing half-done: the open batch was never written

    summary = ingest_paths(fake_store, [path], skip_bad=True)
    assert sorted(sources(fake_store)) == sorted(f"jsonl:good{n}" for n in range(10))
    assert len(summary.skipped) == len(bad)
    assert all("mixed.jsonl:" in message for message in summary.skipped)


def test_a_value_the_database_refuses_is_isolated(fake_store: KnowledgeStore) -> None:
    """Past the loaders (the Python API), a refused source is found by bisection, alone."""
    docs = [SourceDocument(f"s{n}", f"Good text number {n}.") for n in range(10)]
    docs.insert(6, SourceDocument("refused", "has a \u0000 NUL"))
    refused: list[str] = []
    ingest_documents(fake_store, docs, on_refused=refused.append)
    assert sorted(sources(fake_store)) == sorted(f"s{n}" for n in range(10))
    assert len(refused) == 1 and refused[0].startswith("refused: the database refused")

    fake_store.delete(source="s9")
    docs.append(SourceDocument("also-refused", "lone \ud800"))
    with pytest.raises(InputError, match="refused: the database refused"):
        ingest_documents(fake_store, docs)
    assert all(count == 1 for count in sources(fake_store).values())  # whole sources only


# --- filters, queries and k ---------------------------------------------------------------


def _nested_and(depth: int) -> dict[str, Any]:
    flt: dict[str, Any] = {"a": 1}
    for _ in range(depth):
        flt = {"$and": [flt]}
    return flt


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        ({"year": float("nan")}, r"filter\['year'\]: NaN is not a JSON number"),
        ({"year": {"$gt": float("inf")}}, r"filter\['year'\]\['\$gt'\]: Infinity"),
        ({"year": {"$in": [1, float("-inf")]}}, r"\[1\]: -Infinity"),
        ({"ye\u0000ar": 1}, r"key 'ye\\x00ar' contains a NUL character"),
        ({"lang": "e\u0000n"}, r"filter\['lang'\]: string contains a NUL character"),
        ({"lang": {"$ne": "\udc80"}}, r"lone surrogate U\+DC80"),
        ({"$or": [{"a": {"$eq": {"b": float("nan")}}}]}, r"NaN"),
        (_nested_and(2000), rf"nested deeper than {MAX_JSON_DEPTH} levels"),
    ],
)
def test_hostile_filters_are_filter_errors(fake_store: KnowledgeStore, flt: dict[str, Any],
                                           message: str) -> None:
    with pytest.raises(FilterError, match=message):
        compile_filter(flt)
    with pytest.raises(FilterError, match=message):
        fake_store.retrieve("text", filter=flt)


def test_hostile_filter_text() -> None:
    for text, message in [
        ('{"a": NaN}', "NaN is not a JSON number"),
        ('{"a": Infinity}', "Infinity is not a JSON number"),
        ('{"a\\u0000": 1}', "contains a NUL character"),
        ('{"a": "\\u0000"}', "contains a NUL character"),
        ('{"$and": [' * 2000 + '{"a": 1}' + "]}" * 2000, "nested too deeply"),
        ('{"$and": [' * 100 + '{"a": 1}' + "]}" * 100, "nested deeper than 64"),
        ('{"a": ' + "1" * 5000 + "}", "not usable JSON"),
    ]:
        with pytest.raises(FilterError, match=message):
            parse_filter(text)
    assert parse_filter('{"$and": [' * 20 + '{"a": 1}' + "]}" * 20)  # a sane depth passes


def test_k_and_query_bounds(fake_store: KnowledgeStore) -> None:
    fake_store.add_texts(["one text"], [{"source": "s"}])
    for k in (0, -1, MAX_K + 1, 2**63, 2**70, 10**5000):
        with pytest.raises(InputError, match=r"k must be an integer from 1 to 10,000"):
            fake_store.retrieve("text", k)
    assert len(fake_store.retrieve("text", MAX_K)) == 1
    for query, message in [("a\u0000b", "contains a NUL character at position 1"),
                           ("\ud800", "contains a lone surrogate U\\+D800")]:
        with pytest.raises(InputError, match=f"The search query {message}"):
            fake_store.retrieve(query)


def test_agent_ask_refuses_a_nul_question(fake_store: KnowledgeStore) -> None:
    from langchain_core.language_models import FakeListChatModel

    from ragtune.agent import Agent

    model = FakeListChatModel(responses=["never asked"])
    with Agent(store=fake_store, model=model, specialist_model=model,
               checkpoint=False) as agent:
        with pytest.raises(InputError, match="The question contains a NUL character"):
            agent.ask("Who\u0000 is it?")
        with pytest.raises(InputError, match="lone surrogate"):
            agent.ask("Who \udcff?")


def test_cli_k_and_filter_ranges(capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before any database or model: in-process through the CLI's error boundary."""
    cases = [
        (["search", "x", "-k", str(2**70)], "-k must be an integer from 1 to 10,000"),
        (["search", "x", "-k", "10001"], "-k must be an integer from 1 to 10,000"),
        (["ask", "Who?", "-k", str(2**70)], "-k must be an integer from 1 to 10,000"),
        (["ask", "Who is caf\udce9?"], "The question contains a lone surrogate U+DCE9"),
        (["search", "caf\udce9"], "the query contains a lone surrogate U+DCE9"),
        (["search", "x", "--filter", '{"a": NaN}'], "NaN is not a JSON number"),
        (["search", "x", "--filter", '{"a": {"$lt": Infinity}}'], "Infinity"),
        (["search", "x", "--filter", '{"a": "\\u0000"}'], "NUL character"),
        (["search", "x", "--filter", '{"$or": [' * 2000 + "{}" + "]}" * 2000],
         "nested too deeply"),
    ]
    for argv, message in cases:
        assert main(argv) == InputError.exit_code, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


# --- files that are not files, or cannot be read --------------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.jsonl"
    os.mkfifo(path)
    return path


@pytest.mark.timeout(60)
def test_fifos_devices_and_folders_are_named_never_read(
        tmp_path: Path, fifo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    kinds = [(fifo, "a FIFO"), (Path("/dev/zero"), "a character device"),
             (folder, "a directory")]
    for path, kind in kinds:
        for argv in (["search", "--queries", str(path)], ["ask", "--questions", str(path)],
                     ["finetune", "--task", "custom", "--data", str(path), "--name", "x"],
                     ["bench", "qa", "--dataset", "hotpotqa", "--split", "tune", "--out",
                      str(tmp_path / "out"), "--prices", str(path)]):
            assert main(argv) == InputError.exit_code, argv
            err = capsys.readouterr().err
            assert err == f"error: cannot read {path}: not a regular file ({kind})\n", err
    skipped: list[str] = []
    assert list(iter_documents([fifo, Path("/dev/zero")], skip_bad=True,
                               on_skip=skipped.append)) == []
    assert skipped == [f"cannot read {fifo}: not a regular file or folder (a FIFO)",
                       "cannot read /dev/zero: not a regular file or folder (a character device)"]


def test_cli_ingest_of_a_fifo(cli_env: dict[str, str], fifo: Path) -> None:
    proc = subprocess.run(ragtune_cmd("ingest", str(fifo), "-c", "never_created"), env=cli_env,
                          capture_output=True, text=True, timeout=60)
    assert_clean_error(proc, InputError.exit_code, f"cannot read {fifo}: not a regular file")


def _deny(monkeypatch: pytest.MonkeyPatch, denied: Path) -> None:
    """Make the OS refuse to open or stat `denied`, as it does for another user's 0600 file.

    Tests run as root, whom chmod does not stop, so the refusal is injected where the OS answers.
    """
    real_open, real_stat = os.open, os.stat

    def guarded(real: Any) -> Any:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if Path(os.fsdecode(path)).absolute() == denied.absolute():
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "open", guarded(real_open))
    monkeypatch.setattr(os, "stat", guarded(real_stat))


def test_permission_denied_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"id": 1, "question": "q", "text": "t"}\n')
    _deny(monkeypatch, secret)
    expected = f"error: cannot read {secret}: permission denied\n"
    for argv in (["search", "--queries", str(secret)], ["ask", "--questions", str(secret)],
                 ["ingest", str(secret)],
                 ["finetune", "--task", "custom", "--data", str(secret), "--name", "x"]):
        assert main(argv) == InputError.exit_code, argv
        assert capsys.readouterr().err == expected, argv
    skipped: list[str] = []
    assert list(iter_documents([secret], skip_bad=True, on_skip=skipped.append)) == []
    assert skipped == [f"cannot read {secret}: permission denied"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file anyway")
def test_permission_denied_for_real(cli_env: dict[str, str], tmp_path: Path) -> None:
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"id": 1, "question": "q"}\n')
    secret.chmod(0)
    assert_clean_error(run(cli_env, "search", "--queries", str(secret)), InputError.exit_code,
                       f"cannot read {secret}: permission denied")


# --- the CLI as a user runs it: batches go on, ingest keeps the good records -----------------


def test_cli_batches_report_bad_lines_and_go_on(cli_env: dict[str, str], tmp_path: Path,
                                                collection_name: str) -> None:
    docs = hostile_jsonl(tmp_path / "docs.jsonl", HOSTILE_LINES["nul-text"][0])
    assert_clean_error(run(cli_env, "ingest", str(docs), "-c", collection_name),
                       InputError.exit_code, "docs.jsonl:4:", "NUL character")
    proc = run(cli_env, "ingest", str(docs), "-c", collection_name, "--skip-bad", "--json")
    try:
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert summary["new"] == 10 and len(summary["skipped"]) == 1
        assert "docs.jsonl:4:" in summary["skipped"][0]

        queries = tmp_path / "q.jsonl"
        queries.write_text('{"id": "a", "question": "rivers"}\n'
                           '{"id": "b", "question": "nul \\u0000 here"}\n'
                           '{"id": "c", "question": "lone \\ud800"}\n'
                           '{"id": "d", "question": "good documents"}\n', encoding="utf-8")
        proc = run(cli_env, "search", "--queries", str(queries), "-c", collection_name, "-k", "2")
        assert proc.returncode == InputError.exit_code, proc.stderr
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [line["id"] for line in lines] == ["a", "b", "c", "d"]
        assert len(lines[0]["results"]) == 2 and len(lines[3]["results"]) == 2
        assert "NUL character" in lines[1]["error"] and "surrogate" in lines[2]["error"]
        assert proc.stderr.strip().splitlines()[-1] == \
            'error: 2 of 4 queries failed (see their "error" lines)'

        # Every question of this batch is refused before any model loads.
        proc = run(cli_env, "ask", "--questions", str(queries.with_name("bad.jsonl")))
        assert_clean_error(proc, InputError.exit_code, "no such file")
        bad = tmp_path / "bad_questions.jsonl"
        bad.write_text('{"id": "x", "question": "a\\u0000b"}\n{"id": "y", "question": " "}\n',
                       encoding="utf-8")
        proc = run(cli_env, "ask", "--questions", str(bad), "-c", collection_name)
        assert proc.returncode == InputError.exit_code, proc.stderr
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [line["id"] for line in lines] == ["x", "y"]
        assert "NUL character" in lines[0]["error"] and "empty" in lines[1]["error"]
        assert "2 of 2 questions failed" in proc.stderr and "Traceback" not in proc.stderr
    finally:
        run(cli_env, "collections", "drop", collection_name)


def test_cli_single_query_with_undecodable_bytes(cli_env: dict[str, str]) -> None:
    """Bytes that are not UTF-8 reach Python as lone surrogates; they never reach psycopg."""
    proc = subprocess.run(ragtune_cmd("search", os.fsdecode(b"caf\xe9")), env=cli_env,
                          capture_output=True, text=True, timeout=120)
    assert_clean_error(proc, InputError.exit_code, "the query contains a lone surrogate")


# --- the database lost mid-ingest ---------------------------------------------------------


def test_database_lost_mid_ingest_is_exit_4_with_whole_sources(
        database: Any, embedder: Any, cli_env: dict[str, str], tmp_path: Path,
        collection_name: str) -> None:
    """The server terminates the CLI's connections after its first batch; exit 4, one line."""
    path = tmp_path / "big.jsonl"
    sentence = "The river runs through the valley past the old mill and the bridge. "
    split = make_splitter(100, 0)
    expected = {}
    with path.open("w") as handle:
        for n in range(1500):  # three or four chunks each: many batches of 256 chunks
            text = f"Document {n}. " + sentence * 4
            expected[f"jsonl:d{n}"] = len(split(text))
            handle.write(json.dumps({"id": f"d{n}", "text": text}) + "\n")
    app = f"ragtune-test-{uuid.uuid4().hex[:8]}"
    env = {**cli_env, "PGAPPNAME": app}  # libpq names every connection of the CLI with it
    proc = subprocess.Popen(ragtune_cmd("ingest", str(path), "-c", collection_name,
                                        "--chunk-size", "100", "--chunk-overlap", "0"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    terminated = 0
    deadline = time.monotonic() + 240
    try:
        with connect(database.url, autocommit=True) as conn:  # not one of the pool's
            while proc.poll() is None and time.monotonic() < deadline:
                row = conn.execute("SELECT table_name FROM ragtune_collections WHERE name = %s",
                                   (collection_name,)).fetchone()
                written = row and conn.execute(f'SELECT count(*) FROM "{row[0]}"').fetchone()[0]
                if written:
                    terminated += conn.execute(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
                        " FROM pg_stat_activity WHERE application_name = %s", (app,)).fetchone()[0]
                time.sleep(0.1)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        assert terminated >= 1
        assert proc.returncode == DatabaseError.exit_code, (proc.returncode, err)
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith("error: lost the database connection")
        assert len([line for line in err.splitlines() if "error" in line.lower()]) == 1, err
        store = KnowledgeStore(database, embedder, collection_name, create=False)
        counts = sources(store)
        assert 0 < len(counts) < 1500
        assert counts == {source: expected[source] for source in counts}  # whole sources only
    finally:
        from ragtune.tools.store import drop_collection

        drop_collection(database, collection_name)


def test_database_errors_map_to_exit_4() -> None:
    import psycopg
    from psycopg_pool import PoolTimeout

    from ragtune.cli import database_error

    shutdown = psycopg.errors.AdminShutdown("terminating connection due to administrator command")
    wrapped = RuntimeError("node failed")
    wrapped.__cause__ = shutdown
    for exc, message in [(shutdown, "lost the database connection (AdminShutdown"),
                         (wrapped, "lost the database connection (AdminShutdown"),
                         (psycopg.InterfaceError("the connection is closed"), "lost the database"),
                         (PoolTimeout("couldn't get a connection after 10.00 sec"), "in time"),
                         (psycopg.errors.ProgramLimitExceeded("index row too big"),
                          "could not complete the operation")]:
        mapped = database_error(exc)
        assert isinstance(mapped, DatabaseError) and message in str(mapped), exc
    assert database_error(ValueError("x")) is None
    assert database_error(psycopg.errors.DataError("bad value")) is None  # a bug, not an outage

