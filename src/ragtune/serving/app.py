"""One replica: aegra's application behind the guard, in a uvicorn server that drains on SIGTERM.

`serve(config)` runs the whole life of a replica in this process:

1. check the graphs and the configuration (a `ConfigError` before anything starts);
2. open the database (`shared_database`: the embedded server is started or attached; the served
   graphs use the same pool), take the startup lock and migrate aegra's tables;
3. point aegra at that database and at a private runtime folder (its config file and graph
   shims), import it, and wrap it in the `Guard`;
4. run uvicorn on the configured address; aegra's start (checkpointer tables, default assistants)
   happens under the startup lock, which is released once it is done.

On SIGTERM (or Ctrl-C) the replica drains: `/ready` turns 503, new runs are refused, the listening
socket closes, open streams finish, then background runs get up to `drain_timeout_s` to finish
(those still running after it are cancelled and recorded as interrupted), and it exits 0. A second
signal stops it at once.

aegra is started by running uvicorn in-process rather than through `aegra serve`, which binds
0.0.0.0 and does not pass SIGTERM on to its uvicorn child.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError, DatabaseError, RagtuneError
from ragtune.serving.config import ServeConfig
from ragtune.serving.guard import Guard, ServerState

CANCEL_GRACE_S = 5.0
"""After the drain timeout, how long cancelled runs get to record themselves as interrupted."""
POOL_SIZES = {"SQLALCHEMY_POOL_SIZE": "8", "LANGGRAPH_MAX_POOL_SIZE": "8"}
"""aegra's two pools (run and thread records; checkpoints), unless the environment sets them.

aegra's own default of 2 record connections made 50 concurrent runs over 2 replicas 2.6x slower
(p50 14.1 s against 4.4 s with 8, bench/serve.py). With ragtune's store pool (8), one replica uses
at most 24 connections.
"""


def _import_aegra() -> Any:
    try:
        import aegra_api  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise ConfigError("ragtune serve needs the 'serve' extra: pip install -e '.[serve]' "
                          f"({exc.name} is missing)") from exc
    return uvicorn


def _configure_aegra(config: ServeConfig, database_url: str, aegra_config: Path) -> None:
    """Set the environment aegra reads when it is imported (its settings are module globals)."""
    os.environ["DATABASE_URL"] = database_url
    os.environ["AEGRA_CONFIG"] = str(aegra_config)
    os.environ["LOG_LEVEL"] = "INFO" if config.verbose else "WARNING"
    os.environ.setdefault("OTEL_TARGETS", "")
    for name, size in POOL_SIZES.items():
        os.environ.setdefault(name, size)


def _describe_database(config: ServeConfig, url: str) -> str:
    from ragtune.tools.database import redact_url

    return redact_url(config.database_url) if config.database_url else \
        f"embedded ({url.rsplit('host=', 1)[-1]})"


async def _drain_runs(state: ServerState, deadline: float) -> None:
    """Wait for this replica's background runs until `deadline`; cancel what is left then."""
    from aegra_api.api.runs import active_runs

    pending = [task for task in active_runs.values() if not task.done()]
    if not pending:
        return
    print(f"draining: waiting for {len(pending)} run(s)", file=sys.stderr, flush=True)
    _, late = await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
    if late:
        print(f"draining: cancelling {len(late)} run(s) still running after the drain timeout",
              file=sys.stderr, flush=True)
        for task in late:
            task.cancel()
        await asyncio.wait(late, timeout=CANCEL_GRACE_S)


class Replica:
    """The uvicorn server of one replica, with ragtune's start, readiness and drain around it."""

    def __init__(self, config: ServeConfig, database_url: str, runtime: Path,
                 release_lock: Callable[[], None]) -> None:
        self.config = config
        self.database_url = database_url
        self.runtime = runtime
        self.state = ServerState()
        self.failure: BaseException | None = None
        self.drain_deadline: float | None = None
        self._release_lock = release_lock
        self._server: Any = None

    def build_app(self) -> Any:
        """Import aegra's application, wrap its lifespan, and put the guard in front of it."""
        from ragtune.serving.auth import auth

        try:
            # aegra reads its settings from the environment when imported.
            from aegra_api.core.auth_middleware import get_auth_instance
            from aegra_api.main import app
        except Exception as exc:
            first = (str(exc).splitlines() or [""])[0]
            raise ConfigError(f"The server cannot start with this environment: "
                              f"{type(exc).__name__}: {first}") from exc

        if self.config.auth_required and get_auth_instance() is not auth:
            # aegra serves anonymously when it cannot load a hook: never start like that.
            raise ConfigError("The API-key hook did not load; refusing to start without auth")
        original = app.router.lifespan_context
        replica = self

        @asynccontextmanager
        async def lifespan(application: Any) -> AsyncIterator[Any]:
            async with AsyncExitStack() as stack:
                started = await replica._start_aegra(stack, original, application)
                try:
                    yield
                finally:
                    if started:
                        replica.state.draining = True
                        await _drain_runs(replica.state, replica._deadline())

        app.router.lifespan_context = lifespan
        return Guard(app, self.config, self.state)

    async def _start_aegra(self, stack: AsyncExitStack, original: Any, application: Any) -> bool:
        """Enter aegra's lifespan under the startup lock; on failure, record it and stop."""
        cwd = os.getcwd()
        # aegra reads `alembic.ini` from the working directory first: never a user's own.
        os.chdir(self.runtime)
        try:
            await stack.enter_async_context(original(application))
        except Exception as exc:
            # Raising here would make uvicorn print a stack trace and exit 3; serve() reports it.
            self.failure = exc
            self._server.should_exit = True
            return False
        finally:
            os.chdir(cwd)
            self._release_lock()
        self.state.ready = True
        return True

    def _deadline(self) -> float:
        return self.drain_deadline or (time.monotonic() + self.config.drain_timeout_s)

    def run(self) -> None:
        """Serve until a signal drains the replica; raise what stopped its start, if anything."""
        uvicorn = _import_aegra()
        app = self.build_app()
        replica = self

        class DrainingServer(uvicorn.Server):  # type: ignore[name-defined]
            def handle_exit(self, sig: int, frame: Any) -> None:
                if replica.state.draining:
                    self.force_exit = True
                replica.state.draining = True
                replica.drain_deadline = replica.drain_deadline or \
                    time.monotonic() + replica.config.drain_timeout_s
                super().handle_exit(sig, frame)
                # A drain is a clean exit: uvicorn must not raise the signal again afterwards.
                self._captured_signals.clear()

            async def startup(self, sockets: Any = None) -> None:
                await super().startup(sockets)
                if self.started and replica.failure is None:
                    replica._announce(self)

        server = DrainingServer(uvicorn.Config(
            app, host=self.config.host, port=self.config.port, lifespan="on", log_config=None,
            access_log=self.config.verbose, timeout_graceful_shutdown=self.config.drain_timeout_s,
            log_level="info" if self.config.verbose else "warning"))
        self._server = server
        try:
            server.run()
        except SystemExit as exc:
            raise ConfigError(f"Could not listen on {self.config.host}:{self.config.port} "
                              "(is the port in use?)") from exc
        if self.failure is not None:
            raise _as_ragtune_error(self.failure)

    def _announce(self, server: Any) -> None:
        port = server.servers[0].sockets[0].getsockname()[1]
        graphs = ", ".join(g.graph_id for g in self.config.graphs)
        auth = "API key required" if self.config.auth_required else "off (loopback only)"
        print(f"ragtune serve: http://{self.config.host}:{port} (graphs: {graphs}; database: "
              f"{_describe_database(self.config, self.database_url)}; auth: {auth})",
              file=sys.stderr, flush=True)


def _as_ragtune_error(exc: BaseException) -> RagtuneError:
    from ragtune.cli import database_error

    if isinstance(exc, RagtuneError):
        return exc
    found = database_error(exc)
    if found is not None:
        return found
    if isinstance(exc, OSError):
        return DatabaseError(f"The server could not reach its database: {exc}")
    return DatabaseError(f"The server failed to start: {type(exc).__name__}: {exc}")


def check_bindable(host: str, port: int) -> None:
    """Raise `ConfigError` now when `host:port` cannot be listened on (in use, no such address).

    uvicorn would find out only after the database and aegra have started, and say it in a log.
    """
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise ConfigError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def serve(config: ServeConfig) -> None:
    """Run one replica with `config` until it is drained (see the module docstring)."""
    from ragtune.serving.graphs import check_graphs, write_runtime_config
    from ragtune.serving.migrations import StartupLock, migrate_aegra
    from ragtune.tools.database import ENV_DATABASE_URL, shared_database

    config.validate()
    _import_aegra()
    check_bindable(config.host, config.port)
    if config.database_url:
        # The graphs' resources open the same database (deployment configuration, not a run's).
        os.environ[ENV_DATABASE_URL] = config.database_url
    if config.home:
        os.environ["RAGTUNE_HOME"] = config.home
    check_graphs(config)
    database = shared_database(config.database_url, home=config.home)
    runtime = Path(tempfile.mkdtemp(prefix="ragtune-serve-"))
    try:
        aegra_config = write_runtime_config(config, runtime)
        _configure_aegra(config, database.url, aegra_config)
        with StartupLock(database.url) as lock:
            assert lock.connection is not None
            migrate_aegra(lock.connection)
            Replica(config, database.url, runtime, lock.release).run()
    finally:
        shutil.rmtree(runtime, ignore_errors=True)

