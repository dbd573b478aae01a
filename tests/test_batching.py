"""Tests of `CallBatcher` with plain callables: who runs when, what batches, what fails where.

Threads are ordered with events and the batcher's `pending()` count, never by sleeping alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from ragtune.agents.batching import BatcherStats, CallBatcher

WAIT_S = 10.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` until it holds (threads need a moment to reach the queue)."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.001)


class Model:
    """Scripted run functions that record every turn; prompts in `hold` block until released."""

    def __init__(self, hold: tuple[str, ...] = ("first",), fail_batch: bool = False) -> None:
        self.turns: list[tuple[str, list[str], Any]] = []
        self.threads: list[int] = []
        self.fail_batch = fail_batch
        self.entered = {prompt: threading.Event() for prompt in hold}
        self.gates = {prompt: threading.Event() for prompt in hold}

    def release(self, prompt: str = "first") -> None:
        self.gates[prompt].set()

    def started(self, prompt: str = "first") -> None:
        assert self.entered[prompt].wait(WAIT_S), f"{prompt!r} never started running"

    def _hold(self, prompts: list[str]) -> None:
        for prompt in prompts:
            if prompt in self.gates:
                self.entered[prompt].set()
                assert self.gates[prompt].wait(WAIT_S), f"the test never released {prompt!r}"

    def run_one(self, prompt: str, key: Any) -> str:
        self.turns.append(("one", [prompt], key))
        self.threads.append(threading.get_ident())
        self._hold([prompt])
        return f"{prompt}@{key}"

    def run_batch(self, prompts: list[str], key: Any) -> list[str]:
        self.turns.append(("batch", list(prompts), key))
        if self.fail_batch:
            raise ValueError("batch blew up")
        self._hold(prompts)
        return [f"{p}@{key}" for p in prompts]


class Caller(threading.Thread):
    """One thread calling `submit`; keeps its result or its exception."""

    def __init__(self, batcher: CallBatcher[Any, str], prompt: str, key: Any = "k",
                 timeout: float | None = None) -> None:
        super().__init__(daemon=True)
        self.batcher, self.prompt, self.key, self.timeout = batcher, prompt, key, timeout
        self.result: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.batcher.submit(self.prompt, self.key, timeout=self.timeout)
        except BaseException as exc:
            self.error = exc

    def outcome(self) -> str | BaseException | None:
        self.join(WAIT_S)
        assert not self.is_alive(), f"{self.prompt!r} never returned"
        return self.error if self.error is not None else self.result


def make(model: Model, max_batch: int = 8) -> CallBatcher[Any, str]:
    return CallBatcher(model.run_one, model.run_batch, max_batch=max_batch)


def occupy(batcher: CallBatcher[Any, str], model: Model, key: Any = "k") -> Caller:
    """Start a call that holds the model busy until `model.release` is set."""
    first = Caller(batcher, "first", key)
    first.start()
    model.started()
    return first


def queue(batcher: CallBatcher[Any, str], *calls: tuple[str, Any] | Caller) -> list[Caller]:
    """Queue calls one by one, each after the previous one is seen waiting (arrival order)."""
    callers = []
    for call in calls:
        caller = call if isinstance(call, Caller) else Caller(batcher, *call)
        expected = batcher.pending() + 1

        def arrived(n: int = expected) -> bool:
            return batcher.pending() == n

        caller.start()
        wait_until(arrived, f"{caller.prompt!r} is queued")
        callers.append(caller)
    return callers


def test_a_lone_call_runs_at_once_alone_in_the_callers_thread() -> None:
    model = Model(hold=())
    batcher = make(model)

    assert batcher.submit("q", "k") == "q@k"

    assert model.turns == [("one", ["q"], "k")]
    assert model.threads == [threading.get_ident()]
    assert batcher.stats() == BatcherStats(runs=1, largest_batch=1)
    assert not batcher.busy and batcher.pending() == 0


def test_calls_that_queue_while_busy_run_as_one_batch_in_arrival_order() -> None:
    model = Model()
    batcher = make(model)
    first = occupy(batcher, model)
    waiting = queue(batcher, ("p1", "k"), ("p2", "k"), ("p3", "k"))
    assert batcher.busy

    model.release()

    assert first.outcome() == "first@k"
    assert [c.outcome() for c in waiting] == ["p1@k", "p2@k", "p3@k"]
    assert model.turns == [("one", ["first"], "k"), ("batch", ["p1", "p2", "p3"], "k")]
    assert (batcher.batches_run, batcher.calls_batched) == (1, 3)
    assert batcher.stats().largest_batch == 3


def test_calls_with_different_keys_never_share_a_batch_and_the_oldest_key_goes_first() -> None:
    model = Model()
    batcher = make(model)
    first = occupy(batcher, model, key="a")
    waiting = queue(batcher, ("b1", "b"), ("a1", "a"), ("b2", "b"), ("a2", "a"), ("c1", "c"))

    model.release()

    assert [c.outcome() for c in [first, *waiting]] == [
        "first@a", "b1@b", "a1@a", "b2@b", "a2@a", "c1@c"]
    assert model.turns == [
        ("one", ["first"], "a"),
        ("batch", ["b1", "b2"], "b"),
        ("batch", ["a1", "a2"], "a"),
        ("one", ["c1"], "c"),
    ]


def test_no_turn_runs_more_than_max_batch_calls() -> None:
    model = Model()
    batcher = make(model, max_batch=2)
    first = occupy(batcher, model)
    waiting = queue(batcher, *[(f"p{i}", "k") for i in range(1, 6)])

    model.release()

    assert first.outcome() == "first@k"
    assert [c.outcome() for c in waiting] == [f"p{i}@k" for i in range(1, 6)]
    assert [turn[1] for turn in model.turns] == [["first"], ["p1", "p2"], ["p3", "p4"], ["p5"]]
    assert batcher.stats() == BatcherStats(runs=4, batches_run=2, calls_batched=4,
                                           largest_batch=2)


def test_max_batch_of_one_runs_every_call_alone() -> None:
    model = Model()
    batcher = make(model, max_batch=1)
    first = occupy(batcher, model)
    waiting = queue(batcher, ("p1", "k"), ("p2", "k"))

    model.release()

    assert [c.outcome() for c in [first, *waiting]] == ["first@k", "p1@k", "p2@k"]
    assert [turn[0] for turn in model.turns] == ["one", "one", "one"]
    assert batcher.batches_run == 0


def test_an_error_in_a_batch_reaches_every_caller_of_it_and_the_batcher_keeps_working() -> None:
    model = Model(fail_batch=True)
    batcher = make(model)
    first = occupy(batcher, model)
    failing = queue(batcher, ("p1", "k"), ("p2", "k"))
    other = queue(batcher, ("o1", "other"))[0]

    model.release()

    assert first.outcome() == "first@k"
    errors = [c.outcome() for c in failing]
    assert all(isinstance(e, ValueError) and str(e) == "batch blew up" for e in errors), errors
    assert other.outcome() == "o1@other"
    assert batcher.submit("after", "k") == "after@k"
    assert not batcher.busy


def test_run_batch_returning_the_wrong_number_of_results_fails_every_caller() -> None:
    model = Model()
    batcher: CallBatcher[Any, str] = CallBatcher(model.run_one, lambda prompts, key: ["only one"])
    first = occupy(batcher, model)
    waiting = queue(batcher, ("p1", "k"), ("p2", "k"))

    model.release()

    assert first.outcome() == "first@k"
    for caller in waiting:
        error = caller.outcome()
        assert isinstance(error, RuntimeError) and "1 results for 2 prompts" in str(error)


def test_a_call_that_times_out_waiting_is_withdrawn_and_never_runs() -> None:
    model = Model()
    batcher = make(model)
    first = occupy(batcher, model)
    late, patient = queue(batcher, Caller(batcher, "late", timeout=0.3), ("patient", "k"))

    error = late.outcome()  # returns while the model is still busy with "first"
    assert isinstance(error, TimeoutError) and "stayed busy" in str(error)
    assert batcher.pending() == 1
    model.release()

    assert first.outcome() == "first@k"
    assert patient.outcome() == "patient@k"
    assert model.turns == [("one", ["first"], "k"), ("one", ["patient"], "k")]
    assert batcher.stats().timed_out == 1


def test_a_withdrawn_oldest_call_leaves_the_next_turn_to_the_call_behind_it() -> None:
    model = Model()
    batcher = make(model)
    first = occupy(batcher, model)
    late, other = queue(batcher, Caller(batcher, "late", "a", timeout=0.3), ("b1", "b"))

    assert isinstance(late.outcome(), TimeoutError)
    model.release()

    assert first.outcome() == "first@k"
    assert other.outcome() == "b1@b"
    assert model.turns[-1] == ("one", ["b1"], "b")


def test_a_call_that_times_out_inside_a_running_batch_gets_timeout_error_and_no_result() -> None:
    model = Model(hold=("first", "p1"))
    batcher = make(model)
    first = occupy(batcher, model)
    leader, follower = queue(batcher, ("p1", "k"), Caller(batcher, "p2", timeout=1.0))
    model.release()
    assert first.outcome() == "first@k"
    model.started("p1")  # the batch [p1, p2] holds until p1 is released
    assert model.turns[-1] == ("batch", ["p1", "p2"], "k")

    error = follower.outcome()
    assert isinstance(error, TimeoutError) and "ran past" in str(error)
    model.release("p1")

    assert leader.outcome() == "p1@k"
    assert follower.result is None
    assert batcher.stats().timed_out == 1


def test_a_leader_whose_own_run_outlasts_its_timeout_gets_timeout_error() -> None:
    def slow(prompt: str, key: Any) -> str:
        time.sleep(0.2)  # the run itself takes longer than the caller's timeout
        return prompt

    batcher: CallBatcher[Any, str] = CallBatcher(slow, lambda prompts, key: prompts)

    with pytest.raises(TimeoutError, match="ran past its 0.05 s timeout"):
        batcher.submit("q", "k", timeout=0.05)
    assert batcher.submit("q", "k", timeout=5.0) == "q"


def test_close_fails_the_queued_calls_and_refuses_new_ones_but_lets_the_running_one_finish(
) -> None:
    model = Model()
    batcher = make(model)
    first = occupy(batcher, model)
    waiting = queue(batcher, ("p1", "k"), ("p2", "other"))

    batcher.close()

    for caller in waiting:
        error = caller.outcome()
        assert isinstance(error, RuntimeError) and "closed" in str(error)
    assert batcher.pending() == 0
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("after", "k")
    model.release()
    assert first.outcome() == "first@k"
    assert model.turns == [("one", ["first"], "k")]


def test_bad_arguments_are_refused_with_clear_errors() -> None:
    model = Model(hold=())
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        make(model, max_batch=0)
    batcher = make(model)
    with pytest.raises(ValueError, match="timeout must be positive"):
        batcher.submit("q", "k", timeout=0)
    assert model.turns == []


def test_many_threads_each_get_their_own_result() -> None:
    model = Model(hold=())
    batcher = make(model, max_batch=4)
    callers = [Caller(batcher, f"p{i}", key=i % 3) for i in range(40)]
    for caller in callers:
        caller.start()

    assert [c.outcome() for c in callers] == [f"p{i}@{i % 3}" for i in range(40)]
    ran = [prompt for _, prompts, _ in model.turns for prompt in prompts]
    assert sorted(ran) == sorted(f"p{i}" for i in range(40))
    assert all(len(prompts) <= 4 for _, prompts, _ in model.turns)
    assert all(int(p[1:]) % 3 == key for _, prompts, key in model.turns for p in prompts)
