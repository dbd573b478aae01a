"""`ragtune demo` as a newcomer runs it: what it writes is what `ask`/`search` read, quietly.

Subprocesses on the session's real database and real embedder; the agent's questions (the local
model) are skipped with `--search-only` except in the slow end-to-end test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import pytest

from ragtune.errors import ConfigError
from tests.conftest import ragtune_cmd

TIMEOUT = 240


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ragtune_cmd(*args), env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


def test_demo_writes_the_collection_that_search_reads_by_default(cli_env: dict[str, str]
                                                                 ) -> None:
    env = dict(cli_env, RAGTUNE_DATA_DIR="/nonexistent-ragtune-data")
    try:
        demo = run(env, "demo", "--search-only")  # no shared data: the built-in sample
        assert demo.returncode == 0, demo.stderr
        assert "ingesting sample.jsonl (jsonl) into collection 'default'" in demo.stdout
        # Quiet by default: no library progress bars or deprecation notices.
        assert "Loading weights" not in demo.stderr and "Warning" not in demo.stderr, demo.stderr
        search = run(env, "search", "Where was Ada Lovelace born?", "-k", "1", "--json")
        assert search.returncode == 0, search.stderr
        assert json.loads(search.stdout)["results"][0]["title"] == "Ada Lovelace"
    finally:
        run(env, "collections", "drop", "default")


@pytest.mark.parametrize("command", [["demo"], ["ask", "Who was born first?"]])
def test_a_wrong_model_fails_fast_in_one_line(cli_env: dict[str, str], command: list[str]
                                              ) -> None:
    started = time.monotonic()
    proc = run(cli_env, *command, "--model", "nosuchprovider:some-model")
    assert proc.returncode == ConfigError.exit_code, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: Unknown chat model "
                                                                    "provider 'nosuchprovider'")
    assert "'nosuchprovider:some-model'" in proc.stderr and "local:gemma-3-270m" in proc.stderr
    assert proc.stdout == ""  # before the database, the ingest or any model
    assert time.monotonic() - started < 30


def test_the_demo_announces_the_local_model_conversion_before_it_starts(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from ragtune.agents import models
    from ragtune.agents.context import Context
    from ragtune.cli.demo import prepare_local_models

    converted: list[tuple[str, str]] = []
    ready = {"gemma-3-270m": False}
    monkeypatch.setattr(models, "local_model_ready", lambda name: ready[name])
    monkeypatch.setattr(models, "prepare_local_model",
                        lambda name: converted.append((name, capsys.readouterr().out)))
    prepare_local_models(Context())
    assert len(converted) == 1  # model and specialist share one base: converted once
    name, printed_before = converted[0]
    assert name == "gemma-3-270m" and "Converting the local model local:gemma-3-270m once" \
        in printed_before
    ready["gemma-3-270m"] = True
    prepare_local_models(Context())
    assert len(converted) == 1 and "Converting" not in capsys.readouterr().out
    prepare_local_models(Context(model="openai:gpt-4o-mini",
                                 specialist_model="openai:gpt-4o-mini"))
    assert len(converted) == 1  # nothing local to convert


def test_demo_parser_keeps_a_collection_option() -> None:
    from ragtune.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["demo", "-c", "mine"])
    assert isinstance(args, argparse.Namespace) and args.collection == "mine"
    assert parser.parse_args(["demo"]).collection == "default"


@pytest.mark.slow
def test_demo_then_ask_answers_from_the_demo_corpus(cli_env: dict[str, str],
                                                    tmp_path: Path) -> None:
    env = dict(cli_env, RAGTUNE_DATA_DIR=str(tmp_path / "none"))
    try:
        demo = run(env, "demo")
        assert demo.returncode == 0, demo.stderr
        ask = run(env, "ask", "In which city was Ada Lovelace born?", "--json")
        assert ask.returncode == 0, ask.stderr
        assert "london" in json.loads(ask.stdout)["answer"].lower()
    finally:
        run(env, "collections", "drop", "default")
