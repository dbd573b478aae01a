"""The notebooks run end to end (nbclient, a real kernel, the real store and models).

The default run executes every notebook on small inputs: the quickstart and fine-tuning notebooks
with a tiny random model (`tests.tiny_lm`) and the toy data in `tests/data`, the results notebook
on its shipped example run here and on a fresh scripted run in `tests/test_evaluation.py`. The
runs on gemma-3-270m are marked slow.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, TOY_DATA

NOTEBOOKS = REPO_ROOT / "notebooks"


def run_notebook(path: Path, env: dict[str, str], timeout: int = 600) -> Any:
    """Execute `path` in a fresh kernel with `env`; return the executed notebook.

    Raises:
        nbclient.exceptions.CellExecutionError: A cell failed.
    """
    import os

    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return notebook


def printed(notebook: Any) -> str:
    """Everything the notebook's cells printed (stdout streams), in order."""
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.get("outputs", []) if output.get("name") == "stdout")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random causal LM directory."""
    from tests.tiny_lm import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm-notebooks"))


def test_quickstart_notebook_on_a_tiny_model(cli_env: dict[str, str], collection_name: str,
                                             database: Any, tiny_model: Path) -> None:
    """01_quickstart with a tiny random chat model: the real store, search and agent paths."""
    from ragtune.tools.store import drop_collection

    try:
        notebook = run_notebook(NOTEBOOKS / "01_quickstart.ipynb",
                                {**cli_env, "QUICKSTART_COLLECTION": collection_name,
                                 "QUICKSTART_MODEL": str(tiny_model)})
    finally:
        drop_collection(database, collection_name)
    text = printed(notebook)
    assert "'documents': 12" in text and "'new': 12" in text  # the ingest summary
    hybrid = next(line for line in text.splitlines() if line.startswith("hybrid:"))
    assert "River Thames" in hybrid  # the sample corpus, searched for real
    assert "route -> retrieve" in text and "answer ->" in text  # the rules router's trace
    assert "update: route" in text and "token:" in text  # streamed node updates and tokens


def test_finetune_notebook_on_a_tiny_model_without_shared_data(cli_env: dict[str, str],
                                                              tmp_path: Path,
                                                              tiny_model: Path) -> None:
    """02_finetune with a tiny random base on the toy data (the real peft/Trainer path)."""
    notebook = run_notebook(NOTEBOOKS / "02_finetune.ipynb",
                            {**cli_env, "RAGTUNE_HOME": str(tmp_path / "home"),
                             "RAGTUNE_DATA_DIR": str(tmp_path / "no-shared-data"),
                             "FINETUNE_BASE": str(tiny_model), "FINETUNE_STEPS": "3"})
    text = printed(notebook)
    assert "using the toy sample in tests/data" in text
    assert f"{len(json.loads((TOY_DATA / 'train' / 'hotpotqa_train.json').read_text()))} " \
           "examples" in text
    versions = sorted(p.name for p in (tmp_path / "home" / "adapters" / "notebook-reader").iterdir()
                      if p.is_dir())
    assert versions == ["v1", "v2"]
    assert "after rollback: notebook-reader@1" in text


def test_results_notebook_falls_back_to_the_shipped_example_run(cli_env: dict[str, str],
                                                                tmp_path: Path) -> None:
    """03_results with no run of its own reads tests/data/bench-run and leaves it as shipped."""
    repo = tmp_path / "repo"  # a checkout without runs/, so no local run takes precedence
    (repo / "notebooks").mkdir(parents=True)
    shutil.copy(NOTEBOOKS / "03_results.ipynb", repo / "notebooks")
    shutil.copytree(TOY_DATA / "bench-run", repo / "tests" / "data" / "bench-run")
    env = {k: v for k, v in cli_env.items() if k != "RESULTS_DIR"}
    notebook = run_notebook(repo / "notebooks" / "03_results.ipynb", env)
    text = printed(notebook)
    assert "showing the example run in tests/data/bench-run" in text
    assert "hotpotqa tune 6 questions; 36 per-question results" in text
    images = [o for cell in notebook.cells for o in cell.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 3  # F1 vs time, routes, latency CDF
    assert sorted(p.name for p in (repo / "tests" / "data" / "bench-run").iterdir()) == \
        ["predictions.jsonl", "results.json"]


@pytest.mark.slow
def test_quickstart_notebook_on_gemma(cli_env: dict[str, str], collection_name: str,
                                      database: Any) -> None:
    from ragtune.tools.store import drop_collection

    try:
        notebook = run_notebook(NOTEBOOKS / "01_quickstart.ipynb",
                                {**cli_env, "QUICKSTART_COLLECTION": collection_name})
    finally:
        drop_collection(database, collection_name)
    assert "london" in printed(notebook).lower()


@pytest.mark.slow
def test_finetune_notebook_on_gemma(cli_env: dict[str, str], tmp_path: Path) -> None:
    run_notebook(NOTEBOOKS / "02_finetune.ipynb",
                 {**cli_env, "RAGTUNE_HOME": str(tmp_path / "home"), "FINETUNE_STEPS": "2"},
                 timeout=1200)
