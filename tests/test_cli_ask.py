"""`ragtune ask` as a user runs it: exit codes and JSON shapes (subprocesses, real database).

Bad-input cases fail before any model loads. The answering cases run the real local model
(gemma-3-270m) and are marked slow.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ragtune.errors import ConfigError, InputError
from tests.conftest import REPO_ROOT, ragtune_cmd
from tests.test_cli import assert_clean_error, run

SAMPLE = REPO_ROOT / "src" / "ragtune" / "data" / "sample.jsonl"


def test_ask_bad_inputs(cli_env: dict[str, str], tmp_path: Path) -> None:
    assert_clean_error(run(cli_env, "ask", "   "), InputError.exit_code, "empty")
    assert_clean_error(run(cli_env, "ask", "x" * 20_000), InputError.exit_code, "20000")
    assert_clean_error(run(cli_env, "ask", "Who?", "--model", "local:gemma-9000"),
                       ConfigError.exit_code, "gemma-9000")
    env = {k: v for k, v in cli_env.items() if k != "OPENAI_API_KEY"}
    assert_clean_error(run(env, "ask", "Who?", "--model", "openai:gpt-4o-mini"),
                       ConfigError.exit_code)
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"id": 1, "question": "ok"}\n{"id": 2}\n')
    assert_clean_error(run(cli_env, "ask", "--questions", str(bad)), InputError.exit_code,
                       "q.jsonl:2")
    proc = subprocess.run(ragtune_cmd("ask", "Who?", "--policy", "coin"), env=cli_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


@pytest.mark.slow
def test_ask_single_and_batch_with_the_local_model(cli_env: dict[str, str],
                                                   collection_name: str,
                                                   tmp_path: Path) -> None:
    assert run(cli_env, "ingest", str(SAMPLE), "-c", collection_name).returncode == 0
    try:
        proc = run(cli_env, "ask", "In which city was Ada Lovelace born?", "-c", collection_name,
                   "--policy", "rules", "--json")
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert {"id", "answer", "citations", "trace", "steps", "latency_s"} <= set(out)
        assert "london" in out["answer"].lower()
        assert out["trace"][0]["node"] == "route" and out["trace"][-1]["node"] == "answer"
        questions = tmp_path / "q.jsonl"
        questions.write_text('{"id": "a", "question": "Where was Charles Babbage born?"}\n'
                             '{"id": "b", "question": "   "}\n')
        proc = run(cli_env, "ask", "--questions", str(questions), "-c", collection_name,
                   "--policy", "rules")
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [line["id"] for line in lines] == ["a", "b"]
        assert "citations" in lines[0] and "error" in lines[1]
        assert proc.returncode == InputError.exit_code  # one question failed
    finally:
        run(cli_env, "collections", "drop", collection_name)
