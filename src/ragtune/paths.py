"""Where ragtune keeps its files: the home (database) and the cache (converted models).

The home holds state that belongs to one installation or test run (the embedded database); the
cache holds derived files that are expensive to rebuild and safe to share (the local model converted
to safetensors), so a fresh `RAGTUNE_HOME` does not pay for a model conversion again.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "RAGTUNE_HOME"
ENV_CACHE = "RAGTUNE_CACHE_DIR"


def ragtune_home(home: str | os.PathLike[str] | None = None) -> Path:
    """Return the ragtune home directory: `home`, else `RAGTUNE_HOME`, else the user data dir."""
    if home is not None:
        return Path(home).expanduser()
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("ragtune"))


def cache_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """Return the cache directory: `cache`, else `RAGTUNE_CACHE_DIR`, else the user cache dir."""
    if cache is not None:
        return Path(cache).expanduser()
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("ragtune"))
