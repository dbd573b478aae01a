"""Passwords are never printed or stored: error messages, `ragtune db`, bench results and pages.

`redact_url` is checked on every form libpq takes a password in; the CLI is checked as a user runs
it against a closed port (it fails fast), and a `bench qa` run (scripted models on the real store)
is checked for the password in `results.json` and the docs page.
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ragtune.cli.bench import recorded_command
from ragtune.errors import ConfigError, DatabaseError
from ragtune.evaluation.report import redact_command, write_docs
from ragtune.tools.database import redact_url
from tests.conftest import ragtune_cmd
from tests.test_evaluation import scripted  # noqa: F401  (the scripted bench models fixture)

SECRET = "s3cr3t-Pa55"

FORMS = [
    (f"postgresql://alice:{SECRET}@db.example:5432/rag",
     "postgresql://alice:***@db.example:5432/rag"),
    (f"postgres://:{SECRET}@h/d", "postgres://:***@h/d"),
    (f"postgresql://alice:{SECRET}@with@at@h/d", "postgresql://alice:***@h/d"),
    (f"postgresql://h/d?sslmode=require&password={SECRET}&connect_timeout=3",
     "postgresql://h/d?sslmode=require&password=***&connect_timeout=3"),
    (f"postgresql://h/d?PASSWORD={SECRET}", "postgresql://h/d?PASSWORD=***"),
    (f"postgresql://h/d?sslpassword={SECRET}", "postgresql://h/d?sslpassword=***"),
    (f"host=h port=5432 password={SECRET} dbname=rag", "host=h port=5432 password=*** dbname=rag"),
    (f"host=h password = {SECRET}", "host=h password = ***"),
    (f"host=h password='{SECRET} with \\' quote' dbname=rag", "host=h password=*** dbname=rag"),
    (f"host=h password='{SECRET} unterminated", "host=h password=***"),
    (f"Cannot connect to postgresql://u:{SECRET}@h:9/x: connection refused (user@h)",
     "Cannot connect to postgresql://u:***@h:9/x: connection refused (user@h)"),
]


@pytest.mark.parametrize(("text", "redacted"), FORMS)
def test_redact_url_hides_every_password_form(text: str, redacted: str) -> None:
    assert redact_url(text) == redacted
    assert redact_url(redacted) == redacted  # idempotent
    assert SECRET not in redact_url(text)


@pytest.mark.parametrize("text", ["postgresql://u@h/d", "postgresql://h:5432/d",
                                  "host=h user=u dbname=d", "passwords are never printed"])
def test_redact_url_keeps_what_holds_no_password(text: str) -> None:
    assert redact_url(text) == text


def test_command_lines_are_stored_redacted() -> None:
    argv = ["--database-url", f"postgresql://u:{SECRET}@h/d", "bench", "qa",
            f"--database-url=postgresql://h/d?password={SECRET}",
            "--database-url", f"host=h password='{SECRET} x'", "--out", "my dir"]
    line = recorded_command(argv)
    assert SECRET not in line
    words = shlex.split(line)  # still a valid shell line, quoting intact
    assert words[1:3] == ["--database-url", "postgresql://u:***@h/d"]
    assert words[-2:] == ["--out", "my dir"] and "host=h password=***" in words
    raw = "ragtune " + shlex.join(argv)
    assert redact_command(raw) == line == redact_command(line)
    assert SECRET not in redact_command(f"ragtune 'unbalanced password={SECRET}")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ragtune_cmd(*args), env=env, capture_output=True, text=True,
                          timeout=120)


def test_cli_errors_never_print_the_password(cli_env: dict[str, str], tmp_path: Path) -> None:
    port = _closed_port()
    for url, code in [
        (f"postgresql://alice:{SECRET}@127.0.0.1:{port}/rag", DatabaseError.exit_code),
        (f"postgresql://alice@127.0.0.1:{port}/rag?password={SECRET}", DatabaseError.exit_code),
        (f"host=127.0.0.1 port={port} password={SECRET}", ConfigError.exit_code),
        (f"host=127.0.0.1 port={port} password='{SECRET} x'", ConfigError.exit_code),
    ]:
        for env, args in [(cli_env, ("--database-url", url, "db")),
                          ({**cli_env, "RAGTUNE_DATABASE_URL": url}, ("collections",))]:
            proc = _run(env, *args)
            assert proc.returncode == code, (url, proc.stderr)
            assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
            assert SECRET not in proc.stderr + proc.stdout, proc.stderr
            assert "***" in proc.stderr, proc.stderr

    # bench qa fails fast on the database: nothing on the terminal or on disk has the password.
    out, docs = tmp_path / "run", tmp_path / "results.md"
    proc = _run(cli_env, "--database-url", f"postgresql://alice:{SECRET}@127.0.0.1:{port}/x",
                "bench", "qa", "--dataset", "hotpotqa", "--split", "tune", "--limit", "1",
                "--strategies", "no-retrieval", "--out", str(out), "--docs", str(docs),
                "--data-dir", str(Path(__file__).parent / "data"))
    assert proc.returncode == DatabaseError.exit_code, proc.stderr
    assert SECRET not in proc.stderr + proc.stdout
    stored = "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())
    assert SECRET not in stored


def test_error_texts_that_quote_the_url_are_redacted(
        capsys: pytest.CaptureFixture[str]) -> None:
    """psycopg quotes a malformed URL whole; neither the error nor --debug's trace shows it."""
    from ragtune.cli import main
    from ragtune.errors import InputError
    from ragtune.tools.database import connect

    url = f"postgresql://alice:{SECRET}@[::1/rag"
    with pytest.raises(DatabaseError) as caught:
        connect(url)
    assert SECRET not in str(caught.value) and "alice:***@" in str(caught.value)
    assert SECRET not in str(InputError(f"bad --database-url host=h password={SECRET}"))

    for debug in ([], ["--debug"]):
        assert main([*debug, "--database-url", url, "db"]) == DatabaseError.exit_code
        err = capsys.readouterr().err
        assert SECRET not in err and err.splitlines()[-1].startswith("error: Cannot connect")
        assert ("Traceback" in err) == bool(debug)


def test_bench_results_and_docs_page_hold_no_password(
        scripted: Any, tmp_path: Path) -> None:  # noqa: F811
    from ragtune.evaluation.qa import QABenchConfig, run_qa_bench
    from tests.conftest import TOY_DATA

    models, _ = scripted
    command = recorded_command(["--database-url", f"postgresql://u:{SECRET}@h/d", "bench", "qa",
                                "--dataset", "hotpotqa", "--split", "tune"])
    # A caller of the Python API may pass the raw command line: it is redacted on the way in.
    raw = f"ragtune --database-url 'host=h password={SECRET}' bench qa --dataset hotpotqa"
    for number, line in enumerate((command, raw)):
        out = tmp_path / f"run{number}"
        config = QABenchConfig(dataset="hotpotqa", split="tune", data_dir=TOY_DATA, limit=1,
                               out_dir=out, strategies=["no-retrieval"], progress=False)
        report = run_qa_bench(config, models=models, command=line)
        page = tmp_path / f"results{number}.md"
        write_docs(report, page, command=line)
        results = json.loads((out / "results.json").read_text())
        assert "***" in results["settings"]["command"]
        for path in [*out.rglob("*"), page]:
            if path.is_file():
                assert SECRET not in path.read_text(errors="replace"), path
        assert "***" in page.read_text()
