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


def test_finetune_notebook_on_a_tiny_model(cli_env: dict[str, str], tmp_path: Path) -> None:
    """02_finetune with a tiny random base (the real peft/Trainer path, seconds not minutes)."""
    from tests.tiny_lm import build_tiny_lm

    base = build_tiny_lm(tmp_path / "tiny")
    run_notebook(NOTEBOOKS / "02_finetune.ipynb",
                 {**cli_env, "RAGTUNE_HOME": str(tmp_path / "home"), "FINETUNE_BASE": str(base),
                  "FINETUNE_STEPS": "3"})
    versions = sorted(p.name for p in (tmp_path / "home" / "adapters" / "notebook-reader").iterdir()
                      if p.is_dir())
    assert versions == ["v1", "v2"]


@pytest.mark.slow
def test_finetune_notebook_on_gemma(cli_env: dict[str, str], tmp_path: Path) -> None:
    run_notebook(NOTEBOOKS / "02_finetune.ipynb",
                 {**cli_env, "RAGTUNE_HOME": str(tmp_path / "home"), "FINETUNE_STEPS": "2"},
                 timeout=1200)
