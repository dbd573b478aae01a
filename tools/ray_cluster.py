"""The Ray cluster a command runs on: a local one started for it, or an existing one by address.

Ray is an optional extra (`pip install 'ragtune[ray]'`); without it, asking for the Ray engine is a
`ConfigError` that names the install command. `ray_cluster()` joins the cluster the process is
already connected to (a test's or a notebook's), else connects to `address`, else starts a local
cluster with `num_cpus` CPUs and no dashboard, and shuts down only what it started. Ray's own
logs stay in its temporary folder (`/tmp/ray` by default), never in the working tree.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from ragtune.errors import ConfigError

RAY_INSTALL = "pip install 'ragtune[ray]'"
"""The command that installs the Ray extra, named in every error about a missing Ray."""

WORKER_ENV_PREFIXES = ("RAGTUNE_", "HF_", "TRANSFORMERS_")
"""Environment variables of the driver that workers get too (database, data, offline models)."""


def import_ray() -> ModuleType:
    """Return the `ray` module, with Ray Data importable.

    Raises:
        ConfigError: Ray (with its `data` extra) is not installed.
    """
    try:
        import ray
        import ray.data  # noqa: F401  (pyarrow and pandas come with the extra)
    except ImportError as exc:
        raise ConfigError(f"--engine ray needs Ray Data, which is not installed ({exc.name or exc}"
                          f" is missing): {RAY_INSTALL}") from None
    return ray


def worker_env() -> dict[str, str]:
    """Return the environment workers run with: offline model loading and the driver's settings.

    Workers of an existing cluster do not inherit the driver's environment, so the settings that
    decide where the database, the data and the models are travel with each task.
    """
    env = {key: value for key, value in os.environ.items()
           if key.startswith(WORKER_ENV_PREFIXES)}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


@contextmanager
def ray_cluster(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[ModuleType]:
    """Connect to Ray for the duration of the block; yield the `ray` module.

    Args:
        address: An existing cluster (`host:port`, `auto`, `ray://host:port`); None starts a local
            one, unless this process is connected to a cluster already, which is then used.
        num_cpus: CPUs of a local cluster (default: all of this machine's).

    Raises:
        ConfigError: Ray is not installed, or the cluster at `address` cannot be reached.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if num_cpus is not None and num_cpus < 1:
        raise ConfigError(f"A local Ray cluster needs at least 1 CPU, not {num_cpus}")
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                               "logging_level": logging.ERROR, "configure_logging": True}
    try:
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=num_cpus, **options)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
        where = f"at {address}" if address else "locally"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"Cannot start or reach a Ray cluster {where}: {reason}") from None
    try:
        quiet_ray_data()
        yield ray
    finally:
        ray.shutdown()


def quiet_ray_data() -> None:
    """Keep Ray Data's progress bars and per-run INFO lines off the command's output."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def cluster_cpus(ray: ModuleType) -> int:
    """Return the CPUs the connected cluster has (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def pool_size(ray: ModuleType, workers: int | None) -> int:
    """Return the actors to start: `workers`, or every CPU of the cluster when None.

    Raises:
        ConfigError: `workers` is more than the cluster's CPUs (the pool would wait for ever).
    """
    cpus = cluster_cpus(ray)
    if workers is None:
        return cpus
    if workers > cpus:
        raise ConfigError(f"--workers {workers} is more than the Ray cluster's {cpus} CPUs")
    return workers
