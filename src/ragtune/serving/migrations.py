"""aegra's schema (assistants, threads, runs, run events) in ragtune's database, migrated safely.

aegra migrates its tables with Alembic when it starts; ragtune applies the same migrations first,
for two reasons:

- **Replicas.** Alembic takes no lock, so two replicas starting on a fresh database would race.
  `StartupLock` serialises the whole start (migrations, then aegra creating its default
  assistants, which is a race of its own) with a PostgreSQL advisory lock.
- **The embedded server has no `uuid-ossp`.** aegra's first migration runs
  `CREATE EXTENSION "uuid-ossp"` only for `uuid_generate_v4()` column defaults. Where the extension
  is not available, ragtune defines `public.uuid_generate_v4()` over the built-in
  `gen_random_uuid()` (PostgreSQL 13+) and applies Alembic's own SQL for the pending migrations
  (offline mode) without that one statement. Where it is available, nothing is changed.

aegra's own migration step then finds the schema at head and does nothing.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragtune.errors import DatabaseError

if TYPE_CHECKING:
    import psycopg

_STARTUP_LOCK_KEY = 727_274_003
LOCK_POLL_S = 0.2
LOCK_TIMEOUT_S = 300.0
UUID_EXTENSION_SQL = 'CREATE EXTENSION IF NOT EXISTS "uuid-ossp";'
UUID_FALLBACK_SQL = (
    "CREATE OR REPLACE FUNCTION public.uuid_generate_v4() RETURNS uuid "
    "LANGUAGE sql VOLATILE AS 'SELECT gen_random_uuid()'"
)


class StartupLock:
    """The database-wide lock that one starting replica at a time holds.

    `with StartupLock(url) as lock:` takes it on its own autocommit connection
    (`lock.connection`); `release()` gives it back early (the replica does once aegra has
    started); leaving the block releases it too. It also goes when this process dies.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self.connection: psycopg.Connection[Any] | None = None

    def __enter__(self) -> StartupLock:
        import time

        from ragtune.tools.database import connect

        conn = connect(self._url, autocommit=True)
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        try:
            # Polled, never waited for inside a statement: the replica holding the lock may run
            # CREATE INDEX CONCURRENTLY (the checkpointer's setup), which waits for every running
            # statement, a blocked pg_advisory_lock included: that would never end.
            while not conn.execute("SELECT pg_try_advisory_lock(%s)",
                                   (_STARTUP_LOCK_KEY,)).fetchone()[0]:
                if time.monotonic() > deadline:
                    raise DatabaseError(f"Another replica has been starting for over "
                                        f"{LOCK_TIMEOUT_S:.0f} s; is one stuck?")
                time.sleep(LOCK_POLL_S)
        except BaseException:
            conn.close()
            raise
        self.connection = conn
        return self

    def release(self) -> None:
        """Release the lock (idempotent)."""
        conn, self.connection = self.connection, None
        if conn is not None:
            conn.close()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _alembic_config(output: io.StringIO | None = None) -> Any:
    """aegra's Alembic configuration: its script folder, and no ini file.

    Without an ini file Alembic's environment leaves the process's logging alone (with one, it
    would reconfigure every logger from the file).
    """
    import aegra_api
    from alembic.config import Config

    config = Config(output_buffer=output)
    config.set_main_option("script_location",
                           str(Path(aegra_api.__file__).resolve().parent / "alembic"))
    return config


def _current_revision(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    found = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(found[0]) if found else None


def _head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise DatabaseError("aegra-api ships no database migrations")
    return str(head)


def pending_sql(current: str | None) -> str:
    """Alembic's SQL (offline mode) taking aegra's schema from `current` (None: empty) to head."""
    from alembic import command

    output = io.StringIO()
    span = f"{current}:head" if current else "head"
    command.upgrade(_alembic_config(output), span, sql=True)
    return output.getvalue()


def migrate_aegra(conn: psycopg.Connection[Any]) -> str:
    """Bring aegra's tables to head on `conn` (autocommit, under `StartupLock`); return head.

    Raises:
        DatabaseError: a migration failed; nothing of it is kept (one transaction).
    """
    import psycopg

    current, head = _current_revision(conn), _head_revision()
    if current == head:
        return head
    sql = pending_sql(current)
    row = conn.execute(
        "SELECT count(*) FROM pg_available_extensions WHERE name = 'uuid-ossp'").fetchone()
    if not (row and row[0]):
        conn.execute(UUID_FALLBACK_SQL)
        sql = sql.replace(UUID_EXTENSION_SQL, "")
    try:
        # The script brackets itself in BEGIN ... COMMIT.
        conn.execute(sql.encode())
    except psycopg.Error as exc:
        conn.execute("ROLLBACK")
        raise DatabaseError(f"Could not create the server's tables: {exc}") from exc
    return head
