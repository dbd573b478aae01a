"""The database layer on a real Postgres: server lifecycle, migrations, connection failures."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ragtune.errors import ConfigError, DatabaseError
from ragtune.tools.database import SCHEMA_VERSION, Database, connect, migrate, redact_url

OPEN_AND_REPORT = (
    "from ragtune.tools.database import Database\n"
    "db = Database.open()\n"
    "print(db.schema_version())\n"
    "db.close()\n"
)


def _postmaster_pid(home: Path) -> int | None:
    pidfile = home / "pgdata" / "postmaster.pid"
    return int(pidfile.read_text().split()[0]) if pidfile.exists() else None


def test_migrations_are_versioned_and_idempotent(database: Database) -> None:
    with connect(database.url, autocommit=True) as conn:
        assert migrate(conn) == SCHEMA_VERSION
        assert migrate(conn) == SCHEMA_VERSION
        rows = conn.execute("SELECT version FROM ragtune_schema_version ORDER BY 1").fetchall()
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    assert database.schema_version() == SCHEMA_VERSION


def test_second_process_attaches_to_the_running_server(database: Database, ragtune_home: Path,
                                                       cli_env: dict[str, str]) -> None:
    if database.server is None:
        pytest.skip("running against an external database")
    before = _postmaster_pid(ragtune_home)
    out = subprocess.run([sys.executable, "-c", OPEN_AND_REPORT], env=cli_env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(SCHEMA_VERSION)
    assert _postmaster_pid(ragtune_home) == before
    # Our server survived the other process leaving.
    with database.pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_last_user_stops_the_embedded_server(tmp_path: Path, cli_env: dict[str, str]) -> None:
    env = {**cli_env, "RAGTUNE_HOME": str(tmp_path / "home")}
    env.pop("RAGTUNE_DATABASE_URL", None)
    out = subprocess.run([sys.executable, "-c", OPEN_AND_REPORT], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "home" / "pgdata" / "PG_VERSION").exists()
    assert _postmaster_pid(tmp_path / "home") is None


def test_unwritable_data_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="not writable"):
        Database.open(home=blocker / "home")


def test_refused_connection_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DatabaseError, match="Cannot connect"):
        Database.open(f"postgresql://user:secret@127.0.0.1:{port}/db")


def test_silent_server_times_out_within_the_limit() -> None:
    """A server that accepts but never answers must not hang the caller."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(DatabaseError) as info:
            Database.open(f"postgresql://u:secret@127.0.0.1:{listener.getsockname()[1]}/db")
    finally:
        listener.close()
    assert time.monotonic() - started < 30
    assert "secret" not in str(info.value)


def test_not_a_postgres_url() -> None:
    with pytest.raises(ConfigError, match="Not a PostgreSQL URL"):
        Database.open("mysql://localhost/db")


def test_redact_url_hides_passwords() -> None:
    assert redact_url("postgresql://u:pw@h:5/d") == "postgresql://u:***@h:5/d"
    assert redact_url("postgresql://u@h/d") == "postgresql://u@h/d"
