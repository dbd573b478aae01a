"""Thread checkpoints in the knowledge store's PostgreSQL, for the sync and the async faces alike.

`PostgresCheckpointer` is langgraph-checkpoint-postgres's `PostgresSaver` with two additions:

- **Async faces.** `aget_tuple`, `alist`, `aput`, ... run the same synchronous code in a worker
  thread, so one checkpointer (and one bounded pool) serves `invoke` and `ainvoke` on the same
  threads. `AsyncPostgresSaver` would bind its pool to the event loop that opened it, which breaks
  an application that runs several loops (`asyncio.run` per request, notebooks, test suites); a
  worker thread works from any loop, and never blocks it.
- **Retries.** Checkpoint reads and writes get the same retry as the I/O nodes (3 attempts, backing
  off from 0.5 s) on transient database trouble; what still fails surfaces as a `DatabaseError`.
  Every write is an upsert keyed by thread, checkpoint and task, so repeating one is safe.
- **Asynchronous commit** on its own connections (`synchronous_commit=off`): see
  `_make_checkpointer`.

`open_checkpointer(database)` creates one per `Database`, cached on it and closed with it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from langgraph.checkpoint.postgres import PostgresSaver

from ragtune.errors import DatabaseError

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.base import (
        ChannelVersions,
        Checkpoint,
        CheckpointMetadata,
        CheckpointTuple,
    )

    from ragtune.tools.database import Database

T = TypeVar("T")

ATTEMPTS = 3
INITIAL_INTERVAL_S = 0.5
_SETUP_LOCK_KEY = 727_274_002
APPLICATION_NAME = "ragtune-checkpoints"
"""How the checkpointer's connections name themselves in `pg_stat_activity`."""
POOL_SIZE = 8
"""Most connections one checkpointer holds; concurrent runs beyond it wait for one."""


def _transient(exc: BaseException) -> bool:
    import psycopg
    from psycopg_pool import PoolTimeout

    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | PoolTimeout)


def with_retry(call: Callable[[], T], what: str) -> T:
    """Run `call`, retrying transient database errors; raise `DatabaseError` when they persist."""
    interval = INITIAL_INTERVAL_S
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return call()
        except Exception as exc:
            if not _transient(exc):
                raise
            if attempt == ATTEMPTS:
                raise DatabaseError(
                    f"Could not {what} after {ATTEMPTS} attempts: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else 'connection lost'}"
                ) from exc
            time.sleep(interval)
            interval *= 2
    raise AssertionError("unreachable")


class PostgresCheckpointer(PostgresSaver):
    """A `PostgresSaver` with async faces in worker threads and retried I/O (see module doc).

    The async faces run on the checkpointer's own threads, one per pooled connection: asyncio's
    default executor has only `cpu_count + 4` threads, which graph nodes share, so checkpoint
    I/O queued behind them would serialise concurrent runs on a small machine.
    """

    def __init__(self, conn: Any, serde: Any = None) -> None:
        super().__init__(conn, serde=serde)
        self._executor = ThreadPoolExecutor(max_workers=POOL_SIZE,
                                            thread_name_prefix="ragtune-checkpoint")

    async def _offload(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    def close(self) -> None:
        """Stop the worker threads (the pool is closed by its owner)."""
        self._executor.shutdown(wait=False)

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Return the checkpoint tuple `config` names (its thread's newest when no id is given)."""
        return with_retry(lambda: PostgresSaver.get_tuple(self, config), "read a checkpoint")

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Yield the checkpoints matching the arguments, newest first."""
        found = with_retry(lambda: list(PostgresSaver.list(
            self, config, filter=filter, before=before, limit=limit)), "list checkpoints")
        yield from found

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        """Store a checkpoint; return the config that names it."""
        return with_retry(lambda: PostgresSaver.put(self, config, checkpoint, metadata,
                                                    new_versions),
                          "write a checkpoint")

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                   task_id: str, task_path: str = "") -> None:
        """Store the pending writes of a task."""
        with_retry(lambda: PostgresSaver.put_writes(self, config, writes, task_id, task_path),
                   "write checkpoint writes")

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint of `thread_id`."""
        with_retry(lambda: PostgresSaver.delete_thread(self, thread_id), "delete a thread")

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Async `get_tuple` (in a worker thread)."""
        return await self._offload(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Async `list` (in a worker thread)."""
        found = await self._offload(
            lambda: list(self.list(config, filter=filter, before=before, limit=limit)))
        for item in found:
            yield item

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint,
                   metadata: CheckpointMetadata, new_versions: ChannelVersions) -> RunnableConfig:
        """Async `put` (in a worker thread)."""
        return await self._offload(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                          task_id: str, task_path: str = "") -> None:
        """Async `put_writes` (in a worker thread)."""
        await self._offload(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        """Async `delete_thread` (in a worker thread)."""
        await self._offload(self.delete_thread, thread_id)


def open_checkpointer(database: Database) -> PostgresCheckpointer:
    """Return `database`'s checkpointer, creating its tables and bounded pool on first use."""
    return database.extension("checkpointer", lambda: _make_checkpointer(database))


def _make_checkpointer(database: Database) -> tuple[PostgresCheckpointer, Callable[[], None]]:
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool

    from ragtune.tools.database import CONNECT_TIMEOUT_S

    pool: ConnectionPool[Any] = ConnectionPool(
        database.url, min_size=1, max_size=POOL_SIZE, open=False, timeout=CONNECT_TIMEOUT_S,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row,
                "connect_timeout": CONNECT_TIMEOUT_S, "application_name": APPLICATION_NAME,
                # Checkpoints commit without waiting for the WAL flush (2.3x the throughput of
                # 50 concurrent runs in bench/async_agent.py). Only a crash of the database
                # server itself can lose the newest ~0.6 s of them, never corrupt them; a
                # resumed run then repeats the steps those held.
                "options": "-c synchronous_commit=off"})
    try:
        pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        saver = PostgresCheckpointer(pool)
        with pool.connection() as conn:
            # Processes starting together would race on CREATE TABLE IF NOT EXISTS.
            conn.execute("SELECT pg_advisory_lock(%s)", (_SETUP_LOCK_KEY,))
            try:
                with_retry(saver.setup, "create the checkpoint tables")
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK_KEY,))
    except BaseException:
        pool.close()
        raise
    def close() -> None:
        saver.close()
        pool.close()

    return saver, close
