"""The embedded server's lifecycle on real processes: it stops when its last user is gone.

Each test gets its own ragtune home (so its own embedded PostgreSQL) and real subprocesses that
open it and then leave: cleanly, by SIGTERM, by SIGKILL, or after the postmaster was killed and
restarted by someone else. No fakes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ragtune.tools.database import Database

HOLD_OPEN = (
    "import sys, time\n"
    "from ragtune.tools.database import Database\n"
    "db = Database.open()\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"  # wait until told to leave (or killed)
    "db.close()\n"
)


def _postmaster(home: Path) -> psutil.Process | None:
    pidfile = home / "pgdata" / "postmaster.pid"
    try:
        process = psutil.Process(int(pidfile.read_text().split()[0]))
    except (OSError, ValueError, IndexError, psutil.Error):
        return None
    return process if process.is_running() and process.status() != psutil.STATUS_ZOMBIE else None


def _wait_until(condition, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def _user(home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "RAGTUNE_HOME": str(home)}
    env.pop("RAGTUNE_DATABASE_URL", None)
    process = subprocess.Popen([sys.executable, "-c", HOLD_OPEN], env=env, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


@pytest.fixture
def home(tmp_path: Path) -> Path:
    if os.environ.get("RAGTUNE_TEST_DATABASE_URL"):
        pytest.skip("running against an external database")
    return tmp_path / "home"


def _leave(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.write("\n")
    process.stdin.flush()
    assert process.wait(timeout=30) == 0


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_server_stops_when_its_last_user_is_killed(home: Path, how: signal.Signals) -> None:
    user = _user(home)
    assert _postmaster(home) is not None
    user.send_signal(how)
    user.wait(timeout=30)
    assert _wait_until(lambda: _postmaster(home) is None), "the server outlived its last user"
    assert (home / "pgdata" / ".handle_pids.json").read_text().strip() in ("", "[]")


def test_server_stays_while_another_user_lives(home: Path) -> None:
    first, second = _user(home), _user(home)
    server = _postmaster(home)
    assert server is not None
    first.kill()
    first.wait(timeout=30)
    time.sleep(3)  # several watchdog rounds
    assert _postmaster(home) is not None and _postmaster(home).pid == server.pid  # type: ignore[union-attr]
    _leave(second)
    assert _wait_until(lambda: _postmaster(home) is None, timeout=10)


def test_server_restarted_after_a_crash_is_stopped_too(home: Path) -> None:
    first = _user(home)
    crashed = _postmaster(home)
    assert crashed is not None
    crashed.kill()
    crashed.wait(timeout=30)
    second = _user(home)  # finds the server dead and starts a new one
    restarted = _postmaster(home)
    assert restarted is not None and restarted.pid != crashed.pid
    _leave(second)
    assert _postmaster(home) is not None  # the first user is still there
    _leave(first)  # its handle saw the crashed server; the running one must stop anyway
    assert _wait_until(lambda: _postmaster(home) is None, timeout=10)


def test_one_process_with_two_databases_keeps_the_server_until_both_close(home: Path) -> None:
    one = Database.open(home=home)
    two = Database.open(home=home)
    try:
        one.close()
        time.sleep(2.5)  # the watchdog must not take this process for gone
        with two.pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        two.close()
    assert _wait_until(lambda: _postmaster(home) is None, timeout=10)


def test_reopening_after_the_server_died_in_this_process(home: Path) -> None:
    db = Database.open(home=home)
    try:
        server = _postmaster(home)
        assert server is not None
        server.kill()
        server.wait(timeout=30)
        db.close()
        again = Database.open(home=home)
        try:
            with again.pool.connection() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            again.close()
    finally:
        db.close()
    assert _wait_until(lambda: _postmaster(home) is None, timeout=10)


@pytest.mark.parametrize("module", ["orchestrator", "indexing"])
def test_a_run_cannot_choose_the_database(module: str) -> None:
    """The database is deployment configuration: a run's context cannot point elsewhere."""
    import importlib

    graph = importlib.import_module(f"ragtune.graphs.{module}").graph
    inputs = {"question": "Where?"} if module == "orchestrator" else {"paths": []}
    with pytest.raises(TypeError, match="database_url"):
        graph.invoke(inputs, context={"database_url": "postgresql://elsewhere/db"})


def test_cli_terminated_mid_ingest_exits_143_and_leaves_whole_sources(home: Path,
                                                                       tmp_path: Path) -> None:
    """SIGTERM unwinds the CLI like an interrupt: the batch rolls back, the server stops."""
    import json

    folder = tmp_path / "docs"
    folder.mkdir()
    words = ["river", "town", "bridge", "mill", "harbour", "tower", "market", "abbey", "castle",
             "meadow"]
    for i in range(1200):
        body = " ".join(words[(i + j) % len(words)] for j in range(60))
        (folder / f"doc{i:04}.txt").write_text(f"Document {i}. {body}\n")
    env = {**os.environ, "RAGTUNE_HOME": str(home)}
    env.pop("RAGTUNE_DATABASE_URL", None)
    process = subprocess.Popen([sys.executable, "-m", "ragtune.cli", "ingest", str(folder),
                                "-c", "terminated", "--json"], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert _wait_until(lambda: _postmaster(home) is not None, timeout=60)
    time.sleep(4)  # inside the embedding of the first batches
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "terminated"
    assert "Traceback" not in stderr
    assert _wait_until(lambda: _postmaster(home) is None, timeout=15)
    # Whole sources only: every stored source has all of its chunks (one each here).
    again = subprocess.run([sys.executable, "-m", "ragtune.cli", "ingest", str(folder),
                            "-c", "terminated", "--json"], env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["new"] + summary["unchanged"] == 1200 and summary["replaced"] == 0
