"""`bench qa --engine ray`: the questions spread over Ray actors, scored and cached by the driver.

Each actor builds the run's models once (`make_models`, a picklable factory: by default the same
store and models `bench qa` builds locally, on the same database) and answers one question at a
time with the strategy `make_strategy` makes, so a question's prediction is what the local engine
would compute. The driver keeps everything else as it is locally: scoring, the per-question cache
(a killed run continues where it stopped, on either engine), the report. `RayQuestions.strategy`
returns a callable with the local strategy's signature, so `runner.run_strategy` runs it unchanged,
with one thread per actor.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragtune.evaluation.datasets import QAItem
from ragtune.evaluation.strategies import Prediction, StrategyModels, make_strategy

if TYPE_CHECKING:
    from ragtune.evaluation.qa import QABenchConfig

ModelsFactory = Callable[[], tuple[StrategyModels, Callable[[], None]]]
"""Builds a worker's models; returns them and the function that releases them (its database)."""


class QuestionWorker:
    """One Ray actor's state: the models, and each strategy's callable made once."""

    def __init__(self, make_models: ModelsFactory) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        self.models, self._release = make_models()
        self._strategies: dict[str, Callable[[QAItem], Prediction]] = {}

    def ready(self) -> bool:
        """Return True once the models are built (lets the driver surface a failed start)."""
        return True

    def predict(self, name: str, item: QAItem) -> Prediction:
        """Run strategy `name` on one question."""
        run = self._strategies.get(name)
        if run is None:
            run = self._strategies[name] = make_strategy(name, self.models)
        return run(item)

    def release(self) -> None:
        """Release the models' resources (the database connection) before the actor ends."""
        self._release()


class RayQuestions:
    """A pool of `QuestionWorker` actors on a Ray cluster; close it when done.

    Args:
        make_models: The factory each actor calls once.
        workers: Actors, one CPU each (default: every CPU of the cluster).
        address: An existing cluster; None starts a local one (or uses the connected one).

    Raises:
        ConfigError: Ray is missing, the cluster is unreachable, or `workers` exceeds its CPUs.
    """

    def __init__(self, make_models: ModelsFactory, *, workers: int | None = None,
                 address: str | None = None) -> None:
        from ragtune.tools.ray_cluster import pool_size, ray_cluster, worker_env

        self._stack = ExitStack()
        try:
            self._ray = ray = self._stack.enter_context(ray_cluster(address, num_cpus=workers))
            size = pool_size(ray, workers)
            actor = ray.remote(num_cpus=1, max_restarts=0,
                               runtime_env={"env_vars": worker_env()})(QuestionWorker)
            self._actors = [actor.remote(make_models) for _ in range(size)]
            self._ray_get([a.ready.remote() for a in self._actors])
        except BaseException:
            self.close()
            raise
        self._idle: queue.Queue[Any] = queue.Queue()
        for handle in self._actors:
            self._idle.put(handle)

    @property
    def size(self) -> int:
        """The number of actors."""
        return len(self._actors)

    def strategy(self, name: str) -> Callable[[QAItem], Prediction]:
        """Return a callable that runs strategy `name` on one question on a free actor."""
        def run(item: QAItem) -> Prediction:
            handle = self._idle.get()
            try:
                prediction: Prediction = self._ray_get(handle.predict.remote(name, item))
                return prediction
            finally:
                self._idle.put(handle)
        return run

    def close(self) -> None:
        """Release each actor's models, end the actors, and leave the cluster if we started it."""
        actors = getattr(self, "_actors", [])
        try:
            if actors:
                self._ray.get([a.release.remote() for a in actors], timeout=60)
        except Exception:  # an actor that died has nothing left to release
            pass
        for handle in actors:
            self._ray.kill(handle)
        self._actors = []
        self._stack.close()

    def _ray_get(self, refs: Any) -> Any:
        """`ray.get`, re-raising a task's own exception as it would have been raised locally."""
        from ray.exceptions import RayTaskError

        try:
            return self._ray.get(refs)
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise


def default_worker_models(config: QABenchConfig, questions: Sequence[QAItem],
                          strategies: list[str], out_dir: Path
                          ) -> tuple[StrategyModels, Callable[[], None]]:
    """Build, in a worker, the store and models `bench qa` builds in the driver.

    The driver has ingested the pool and trained the specialist already, so here the ingest finds
    every paragraph stored (nothing is embedded) and the adapter is loaded, not trained.
    """
    from ragtune.evaluation.qa import _default_models

    models, database, _ = _default_models(config, questions, strategies, out_dir)
    return models, database.close


def start_ray_questions(config: QABenchConfig, questions: Sequence[QAItem], strategies: list[str],
                        out_dir: Path, make_models: ModelsFactory | None = None) -> RayQuestions:
    """Start the actor pool for a `bench qa` run: `config.workers` actors at `config.ray_address`.

    Args:
        config: The run's settings.
        questions: The run's questions (the default factory needs them for the specialist).
        strategies: The strategies to run.
        out_dir: The run's folder (where the specialist adapter is registered).
        make_models: The factory each actor calls; default `default_worker_models` on `config`.
    """
    import functools

    factory = make_models or functools.partial(default_worker_models, config, list(questions),
                                               strategies, out_dir)
    return RayQuestions(factory, workers=config.workers, address=config.ray_address)
