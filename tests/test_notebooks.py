"""The notebooks run end to end (nbclient, a real kernel, the real store and models)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"


def run_notebook(path: Path, env: dict[str, str], timeout: int = 600) -> None:
    """Execute `path` in a fresh kernel with `env`; raise on the first failing cell."""
    import os

    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    saved = dict(os.environ)
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.slow
def test_quickstart_notebook(cli_env: dict[str, str], collection_name: str, database) -> None:  # type: ignore[no-untyped-def]
    from ragtune.tools.store import drop_collection

    try:
        run_notebook(NOTEBOOKS / "01_quickstart.ipynb",
                     {**cli_env, "QUICKSTART_COLLECTION": collection_name})
    finally:
        drop_collection(database, collection_name)
