"""Serialise calls on one model and run the calls that queue while it is busy as one batch.

This module owns `CallBatcher`, a small engine-independent scheduler for a model that runs one
generation at a time. Sub-questions that fan out in parallel threads would otherwise queue on the
model's lock one by one; the batcher lets the calls that arrived while the model was busy, and that
share a key (adapter and decoding settings), run together as one batch when it frees up.

The policy is "batch what queued while busy": a call that finds the model idle runs at once, alone
(no waiting window, so a lone call gains no latency). There is no worker thread: the caller whose
request is oldest when the model frees up becomes the leader, takes up to `max_batch` waiting
requests with that request's key (in arrival order) and runs them in its own thread; requests with
other keys wait for the next turn, so the oldest waiting request's key always goes next.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar, cast

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")

_State = Literal["queued", "running", "done", "abandoned"]


@dataclass(frozen=True)
class BatcherStats:
    """How often the batcher ran calls, and how often it batched them.

    Attributes:
        runs: Turns the model took (each one `run_one` or one `run_batch` call).
        batches_run: Turns that ran two or more calls through `run_batch`.
        calls_batched: Calls that ran inside those batches.
        largest_batch: The most calls one turn ran (0 before the first turn).
        timed_out: Calls that gave up waiting (`TimeoutError`) or were interrupted.
    """

    runs: int = 0
    batches_run: int = 0
    calls_batched: int = 0
    largest_batch: int = 0
    timed_out: int = 0


@dataclass(eq=False)
class _Request(Generic[K, R]):
    """One submitted call: its input, its state and, once done, its outcome."""

    prompt: str
    key: K
    wake: threading.Condition
    state: _State = "queued"
    result: R | None = None
    error: BaseException | None = None
    has_result: bool = False


class CallBatcher(Generic[K, R]):
    """Serialise calls on one model; calls that queue while it is busy run as one batch.

    Keys are compared with `==`: calls batch together only when their keys are equal, e.g. a key
    `(adapter, settings)` with a frozen settings dataclass. `run_one` and `run_batch` are called
    outside the batcher's lock, one turn at a time, in the thread of the request that leads it.

    Example:
        >>> batcher = CallBatcher(lambda p, k: p.upper(), lambda ps, k: [p.upper() for p in ps])
        >>> batcher.submit("hi", key="base")
        'HI'
    """

    def __init__(
        self,
        run_one: Callable[[str, K], R],
        run_batch: Callable[[list[str], K], Sequence[R]],
        *,
        max_batch: int = 8,
    ) -> None:
        """Batch calls of `run_batch` (two or more prompts) and `run_one` (a lone prompt).

        Args:
            run_one: Runs one prompt with a key; used when a turn has a single call.
            run_batch: Runs two to `max_batch` prompts sharing a key; returns one result per
                prompt, in order.
            max_batch: Most calls one turn runs (1 turns batching off: every call runs alone).

        Raises:
            ValueError: `max_batch` is below 1.
        """
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._run_one = run_one
        self._run_batch = run_batch
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: deque[_Request[K, R]] = deque()
        self._busy = False
        self._closed = False
        self._stats = BatcherStats()  # replaced, never mutated: `stats()` hands out snapshots

    def submit(self, prompt: str, key: K, timeout: float | None = None) -> R:
        """Run `prompt` with `key`, batched with calls that queued beside it; return its result.

        Args:
            prompt: The model's input.
            key: What a batch must share (e.g. the adapter and the decoding settings).
            timeout: Seconds to wait for the turn plus its run; None waits for ever.

        Raises:
            TimeoutError: `timeout` passed first. A request still queued is withdrawn (it never
                runs); one already running in another caller's batch has its result dropped.
            RuntimeError: The batcher is closed, or was closed while the call was queued.
            ValueError: `timeout` is not a positive number.
            Exception: Whatever `run_one`/`run_batch` raised for the turn this call ran in (every
                caller of that turn gets it).
        """
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive seconds or None, got {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._closed:
                raise RuntimeError("The call batcher is closed; it takes no more calls.")
            request: _Request[K, R] = _Request(prompt, key, threading.Condition(self._lock))
            self._queue.append(request)
            try:
                batch = self._wait_for_turn(request, deadline, timeout)
            except BaseException:
                self._abandon(request)
                raise
        if batch:
            self._lead(batch)
            late = deadline is not None and time.monotonic() > deadline
            if late and request.error is None:
                with self._lock:
                    self._count(timed_out=1)
                raise TimeoutError(
                    f"The model call ran past its {timeout:g} s timeout (its batch finished late)"
                )
        return _outcome(request)

    def pending(self) -> int:
        """Count the calls waiting for their turn (not those running)."""
        with self._lock:
            return len(self._queue)

    @property
    def busy(self) -> bool:
        """Whether a turn is running now."""
        with self._lock:
            return self._busy

    def stats(self) -> BatcherStats:
        """Return the counters so far (a snapshot)."""
        with self._lock:
            return self._stats

    @property
    def batches_run(self) -> int:
        """Turns that ran two or more calls as one batch."""
        return self.stats().batches_run

    @property
    def calls_batched(self) -> int:
        """Calls that ran inside a batch of two or more."""
        return self.stats().calls_batched

    def close(self) -> None:
        """Take no more calls and fail the queued ones with `RuntimeError`.

        A turn already running finishes and delivers its results; close the model only after it
        (e.g. under the model's own lock).
        """
        with self._lock:
            self._closed = True
            while self._queue:
                request = self._queue.popleft()
                request.error = RuntimeError("The call batcher was closed before this call ran.")
                request.state = "done"
                request.wake.notify()

    def __enter__(self) -> CallBatcher[K, R]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _wait_for_turn(
        self, request: _Request[K, R], deadline: float | None, timeout: float | None
    ) -> list[_Request[K, R]]:
        """Wait (lock held) until `request` is done or leads a turn; return that turn's batch.

        An empty list means another caller ran the request (its outcome is set).
        """
        while True:
            if request.state == "done":
                return []
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(
                    f"The model stayed busy with other calls for the whole {timeout:g} s timeout"
                    if request.state == "queued"
                    else f"The model call ran past its {timeout:g} s timeout"
                )
            if request.state == "queued" and not self._busy and self._queue[0] is request:
                return self._take_batch(request.key)
            request.wake.wait(remaining)

    def _take_batch(self, key: K) -> list[_Request[K, R]]:
        """Take up to `max_batch` queued requests with `key`, oldest first; start the turn."""
        batch: list[_Request[K, R]] = []
        rest: deque[_Request[K, R]] = deque()
        for queued in self._queue:
            if len(batch) < self.max_batch and queued.key == key:
                queued.state = "running"
                batch.append(queued)
            else:
                rest.append(queued)
        self._queue = rest
        self._busy = True
        size = len(batch)
        self._count(runs=1, batches_run=int(size > 1), calls_batched=size if size > 1 else 0)
        if size > self._stats.largest_batch:
            self._stats = dataclasses.replace(self._stats, largest_batch=size)
        return batch

    def _lead(self, batch: list[_Request[K, R]]) -> None:
        """Run one turn outside the lock, deliver its outcomes and hand the model on."""
        results: Sequence[R] = ()
        error: BaseException | None = None
        try:
            if len(batch) == 1:
                results = [self._run_one(batch[0].prompt, batch[0].key)]
            else:
                results = self._run_batch([r.prompt for r in batch], batch[0].key)
                if len(results) != len(batch):
                    error = RuntimeError(
                        f"run_batch returned {len(results)} results for {len(batch)} prompts"
                    )
        except BaseException as exc:  # delivered to every caller of the turn, the leader too
            error = exc
        with self._lock:
            for index, request in enumerate(batch):
                if request.state == "abandoned":
                    continue  # its caller timed out; nobody waits for this result
                if error is None:
                    request.result = results[index]
                    request.has_result = True
                else:
                    request.error = error
                request.state = "done"
                request.wake.notify()
            self._busy = False
            self._wake_head()

    def _abandon(self, request: _Request[K, R]) -> None:
        """Withdraw a request whose caller stops waiting (lock held); drop it from the queue."""
        if request.state == "done":
            return
        if request.state == "queued":
            self._queue.remove(request)
            if not self._busy:
                self._wake_head()  # it may have been the head that was about to lead
        request.state = "abandoned"
        self._count(timed_out=1)

    def _count(self, **increments: int) -> None:
        """Add `increments` to the named counters (lock held)."""
        self._stats = dataclasses.replace(self._stats, **{
            name: getattr(self._stats, name) + step for name, step in increments.items()
        })

    def _wake_head(self) -> None:
        """Wake the oldest queued request so it leads the next turn (lock held)."""
        if self._queue:
            self._queue[0].wake.notify()


def _outcome(request: _Request[K, R]) -> R:
    """Return a done request's result or raise its error."""
    if request.error is not None:
        raise request.error
    if not request.has_result:
        raise RuntimeError("The call batcher finished a request without an outcome.")
    return cast(R, request.result)  # has_result: R itself may be None

