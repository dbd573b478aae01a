"""`ragtune ask --thread-id/--resume`: the argument rules, checked before any model loads."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import ragtune_cmd


@pytest.mark.parametrize("args, message", [
    (["ask", "--resume"], "--resume needs --thread-id"),
    (["ask", "--resume", "--thread-id", "t", "a question"], "--resume needs --thread-id"),
    (["ask", "--thread-id", "t", "--questions", "q.jsonl"], "--thread-id takes one QUESTION"),
])
def test_thread_arguments_are_checked(args: list[str], message: str,
                                      cli_env: dict[str, str]) -> None:
    out = subprocess.run(ragtune_cmd(*args), env=cli_env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 3, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
