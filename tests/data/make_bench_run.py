"""Rewrite `tests/data/bench-run/`: a `bench qa` run of the scripted test model on the toy data.

03_results.ipynb falls back to this folder when no run of its own is there. Regenerate it when the
report's format changes: `.venv/bin/python -m tests.data.make_bench_run` from the repository root.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

OUT = Path(__file__).resolve().parent / "bench-run"


def main() -> None:
    """Run every strategy on the toy HotpotQA tune split and keep results and predictions."""
    home = tempfile.mkdtemp(prefix="ragtune-bench-run-")
    os.environ["RAGTUNE_HOME"] = home
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from ragtune.agent import Agent
    from ragtune.agents.router import load_router
    from ragtune.evaluation.datasets import load_split
    from ragtune.evaluation.qa import QABenchConfig, run_qa_bench
    from ragtune.evaluation.strategies import StrategyModels
    from ragtune.tools.database import Database
    from ragtune.tools.ingest import ingest_documents
    from ragtune.tools.loaders.document import SourceDocument
    from ragtune.tools.store import KnowledgeStore
    from tests.conftest import TOY_DATA
    from tests.test_evaluation import AnswerIfPresent

    with Database.open() as db:
        store = KnowledgeStore(db, DeterministicFakeEmbedding(size=32),
                               f"toy_{uuid.uuid4().hex[:8]}")
        try:
            questions = load_split("hotpotqa", "tune", folder=TOY_DATA)
            paragraphs = sorted({(t, x) for q in questions for t, x in q.paragraphs})
            ingest_documents(store, [SourceDocument(source=f"p:{t}", text=x, title=t)
                                     for t, x in paragraphs])
            model = AnswerIfPresent(answers=[q.answer for q in questions])
            models = StrategyModels(
                store=store, chat_model=model, reader_model=model, specialist_model=model,
                agent_factory=lambda router: Agent(store=store, model=model, checkpoint=False,
                                                   specialist_model=model,
                                                   router=router or load_router("rules")))
            with tempfile.TemporaryDirectory() as run_dir:
                report = run_qa_bench(
                    QABenchConfig(dataset="hotpotqa", split="tune", data_dir=TOY_DATA,
                                  out_dir=Path(run_dir), progress=False), models=models,
                    command="ragtune bench qa --dataset hotpotqa --split tune (toy data)")
                report["settings"]["model"] = "scripted test model (tests/test_evaluation.py)"
                report["outputs"] = {}  # paths of a temporary folder
                OUT.mkdir(exist_ok=True)
                (OUT / "results.json").write_text(json.dumps(report, indent=1) + "\n",
                                                  encoding="utf-8")
                (OUT / "predictions.jsonl").write_text(
                    (Path(run_dir) / "predictions.jsonl").read_text(encoding="utf-8"),
                    encoding="utf-8")
        finally:
            store.delete_collection()
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
