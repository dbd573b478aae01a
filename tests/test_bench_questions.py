"""`ragtune bench qa --questions FILE.jsonl --collection NAME`: a user's own questions, end to end.

Bad files go through the real CLI in a subprocess (they are refused before any model or database
work). The good run goes through the CLI's `main` in this process over a real collection (the
embedded Postgres, the real embedder), with the chat model replaced by a scripted one
(`tests.test_composition.KeyedReader`) where the CLI would load gemma.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ragtune.tools.store import KnowledgeStore
from tests.conftest import ragtune_cmd
from tests.test_composition import BORN_FIRST, PARAGRAPHS, RIVER, KeyedReader

SAME = "Were Scott Derrickson and Ed Wood of the same nationality?"
GOOD: list[dict[str, Any]] = [
    {"id": "river", "question": RIVER, "answer": "River Thames",
     "gold_titles": ["Ada Lovelace", "River Thames"], "kind": "bridge"},
    {"id": "born", "question": BORN_FIRST, "answer": "Lord Byron",
     "answer_aliases": ["George Gordon Byron"], "gold_titles": ["Charles Babbage", "Lord Byron"],
     "kind": "comparison"},
    {"id": 3, "question": SAME, "answer": "yes", "kind": "comparison"},
]


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines), encoding="utf-8")
    return path


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ragtune_cmd("bench", "qa", *args), capture_output=True, text=True,
                          env=env, timeout=300)


def test_bad_lines_are_all_reported_by_file_and_line_and_nothing_runs(
        tmp_path: Path, cli_env: dict[str, str]) -> None:
    file = write_lines(tmp_path / "mine.jsonl", [
        GOOD[0],
        "{not json",
        {"id": "a", "question": "Who?"},                                     # no answer
        {"id": True, "question": "Who?", "answer": "x"},                     # a bool id
        {"id": "river", "question": "Again?", "answer": "x"},                # duplicate id
        {"id": "nul", "question": "Who\u0000?", "answer": "x"},              # a NUL
        {"id": "al", "question": "Who?", "answer": "x", "answer_aliases": "y"},
        {"id": "typo", "question": "Who?", "answer": "x", "gold_title": ["T"]},
        "[1, 2]",
        "",
        {"id": "ok", "question": "Who?", "answer": "x"},
    ])
    out = tmp_path / "out"
    run = run_cli(cli_env, "--questions", str(file), "--collection", "anything", "--out", str(out))
    assert run.returncode == 3, run.stderr
    assert "Traceback" not in run.stderr and "8 bad lines, nothing was run" in run.stderr
    for line, reason in [(2, "invalid JSON"), (3, "missing 'answer'"),
                         (4, "'id' must be a string or an integer, not bool"),
                         (5, "duplicate id 'river' (first on line 1)"), (6, "NUL character"),
                         (7, "'answer_aliases' must be a list"), (8, "unknown key 'gold_title'"),
                         (9, "expected a JSON object")]:
        reported = [t for t in run.stderr.splitlines() if f"mine.jsonl:{line}: " in t]
        assert len(reported) == 1 and reason in reported[0], (line, run.stderr)
    assert "mine.jsonl:1:" not in run.stderr and "mine.jsonl:11:" not in run.stderr
    assert not (out / "cache").exists()


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--collection", "c"], 2, "Give --dataset and --split, or --questions"),
    (["--questions", "Q", "--dataset", "hotpotqa", "--split", "tune", "--collection", "c"], 2,
     "give no --dataset or --split"),
    (["--questions", "Q"], 2, "--questions needs --collection NAME"),
    (["--questions", "Q", "--collection", "c", "--strategies", "specialist"], 2,
     "needs --specialist-adapter"),
    (["--questions", "EMPTY", "--collection", "c"], 3, "no questions"),
    (["--questions", "Q", "--collection", "no_such_collection_here"], 2,
     "No collection named 'no_such_collection_here': "),
])
def test_bad_requests_are_refused_before_any_work(args: list[str], code: int, message: str,
                                                  tmp_path: Path, cli_env: dict[str, str]
                                                  ) -> None:
    questions = write_lines(tmp_path / "q.jsonl", GOOD)
    empty = write_lines(tmp_path / "empty.jsonl", ["", "  "])
    args = [str(questions) if a == "Q" else str(empty) if a == "EMPTY" else a for a in args]
    run = run_cli(cli_env, *args, "--out", str(tmp_path / "out"))
    assert run.returncode == code, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out" / "cache").exists()


def test_an_empty_collection_is_refused_with_the_collections_listed(
        fake_store: KnowledgeStore, tmp_path: Path, cli_env: dict[str, str]) -> None:
    from ragtune.tools.embeddings import load_embeddings

    # The CLI opens collections with the default embedder, so make this one with it.
    empty = KnowledgeStore(fake_store.database, load_embeddings(), f"{fake_store.collection}_e")
    try:
        run = run_cli(cli_env, "--questions", str(write_lines(tmp_path / "q.jsonl", GOOD)),
                      "--collection", empty.collection, "--out", str(tmp_path / "out"))
        assert run.returncode == 2, run.stderr
        assert f"Collection {empty.collection!r} is empty" in run.stderr
        assert repr(fake_store.collection) in run.stderr  # the others are listed
    finally:
        empty.delete_collection()


@pytest.fixture
def scripted_cli(monkeypatch: pytest.MonkeyPatch) -> KeyedReader:
    """Where the CLI would load the local model and its adapters, a scripted reader instead."""
    model = KeyedReader(
        plans={RIVER: "1. In which city was Ada Lovelace born?\n2. Which river flows through #1?"},
        answers={RIVER: "River Thames", "Ada Lovelace born": "London",
                 "through London": "River Thames", BORN_FIRST: "Ada Lovelace",
                 "Charles Babbage": "26 December 1791", "Lord Byron": "22 January 1788",
                 SAME: "American", "Scott Derrickson": "American", "Ed Wood": "American"})
    monkeypatch.setattr("ragtune.agents.models.load_chat_model", lambda spec, **kw: model)
    monkeypatch.setattr("ragtune.graphs.resources.Resources._adapted", lambda self, *a: None)
    monkeypatch.setattr("ragtune.graphs.resources.Resources.domain_adapters",
                        lambda self, context: [])
    return model


def test_a_question_file_runs_every_strategy_end_to_end(
        real_store: KnowledgeStore, scripted_cli: KeyedReader, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from ragtune.cli import main

    real_store.add_texts([text for _, text in PARAGRAPHS.values()],
                         [{"source": key, "title": title}
                          for key, (title, _) in PARAGRAPHS.items()])
    file = write_lines(tmp_path / "mine.jsonl", ["", *GOOD])
    out = tmp_path / "out"
    command = ["bench", "qa", "--questions", str(file), "--collection", real_store.collection,
               "--policy", "rules", "-k", "2", "--out", str(out), "--no-progress"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "| rag-base |" in printed and "| specialist |" not in printed
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    ran = ("no-retrieval", "rag-base", "rag", "multi-step", "adaptive", "oracle-router")
    assert sorted((r["strategy"], r["id"]) for r in lines) == \
        sorted((s, str(g["id"])) for s in ran for g in GOOD)
    assert all(isinstance(r["answer"], str) and not r.get("error") for r in lines)
    by = {(r["strategy"], r["id"]): r for r in lines}
    # The orchestrator answers the comparison with a candidate, the yes/no question with yes.
    for strategy in ("multi-step", "adaptive"):
        assert by[(strategy, "born")]["answer"] == "Lord Byron"
        assert by[(strategy, "3")]["answer"] == "yes"
        assert by[(strategy, "river")]["answer"] == "River Thames"
    assert by[("rag-base", "born")]["answer"] == "Ada Lovelace"  # single-shot, unconstrained
    assert by[("multi-step", "born")]["kind"] == "comparison"
    assert by[("rag", "river")]["recall"] is not None and by[("rag", "3")]["recall"] is None
    report = json.loads((out / "results.json").read_text())
    assert report["settings"]["questions_file"] == "mine.jsonl"
    assert report["settings"]["collection"] == real_store.collection
    assert report["strategies"]["multi-step"]["f1"] == 1.0
    # A rerun is served from the cache; an edited file is another run, refused without --fresh.
    calls = len(scripted_cli.prompts)
    assert main(command) == 0 and len(scripted_cli.prompts) == calls
    write_lines(file, [{**GOOD[0], "answer": "Thames"}, *GOOD[1:]])
    assert main(command) == 3
    assert "other settings (questions_sha256)" in capsys.readouterr().err


def test_unseen_only_leaves_out_the_questions_an_adapter_trained_on(
        real_store: KnowledgeStore, scripted_cli: KeyedReader, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The scripted reader serves no adapter, so the adapters the run uses are stood in for: one
    that trained on the river question, then one whose manifest records no questions."""
    from ragtune.agents.finetune.datasets import question_key
    from ragtune.cli import main
    from ragtune.evaluation.overlap import TrainedAdapter

    real_store.add_texts([text for _, text in PARAGRAPHS.values()],
                         [{"source": key, "title": title}
                          for key, (title, _) in PARAGRAPHS.items()])
    trained = [TrainedAdapter("reader", "reader@9", frozenset({question_key(RIVER)}))]
    monkeypatch.setattr("ragtune.evaluation.qa.adapters_in_use", lambda models: trained)
    file = write_lines(tmp_path / "mine.jsonl", GOOD)
    out = tmp_path / "out"
    command = ["bench", "qa", "--questions", str(file), "--collection", real_store.collection,
               "--policy", "rules", "-k", "2", "--strategies", "rag", "--unseen-only",
               "--out", str(out), "--no-progress"]
    assert main(command) == 0
    assert "1 questions the adapters trained on were left out" in capsys.readouterr().out
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == ["3", "born"]
    report = json.loads((out / "results.json").read_text())
    assert report["settings"]["unseen_only"] is True
    assert report["training_overlap"]["excluded_trained"] == 1
    assert report["training_overlap"]["trained_questions"] == 0  # of those that ran

    trained[0] = TrainedAdapter("reader", "reader@9", None)
    assert main([*command[:-3], "--out", str(tmp_path / "out2"), "--no-progress"]) == 2
    assert "reader@9 record no training questions" in capsys.readouterr().err
