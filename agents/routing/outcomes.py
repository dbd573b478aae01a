"""Outcome labels: each question labelled by the cheapest strategy that answered it correctly.

Owns reading the label runs (folders written by ``ragtune bench qa --strategies no-retrieval rag``
on tune data), turning them into `LabelledQuestion`s with the oracle's rule
(`ragtune.evaluation.report.oracle_rows`: A no-retrieval < B rag < C multi-step, correct meaning
F1 >= `CORRECT_F1`; nothing correct: C), and refusing runs on test questions. This is
Adaptive-RAG's recipe; the router is then scored with the same labels the bench's oracle uses.

Multi-step need not run: when neither no-retrieval nor rag is correct the label is C whether or
not multi-step is, so its result never changes a label, and it costs as much as the other two
together several times over (about 30 CPU-seconds a question with the local 270M model).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.errors import InputError

from .data import LabelledQuestion
from .decision import Action

LABEL_STRATEGIES = ("no-retrieval", "rag")
"""The strategies a label run must hold, cheapest first (multi-step cannot change a label)."""

ORACLE_ACTIONS: dict[str, Action] = {"A": "specialist", "B": "retrieve", "C": "decompose"}
"""The router action each oracle label asks for (A: answer without retrieval)."""

ACTION_LABELS: dict[str, str] = {"specialist": "A", "retrieve": "B", "decompose": "C"}
"""The oracle label each router action amounts to."""

DATASET_SOURCES: dict[str, dict[str, str]] = {
    "hotpotqa": {"licence": "CC BY-SA 4.0",
                 "source": "HotpotQA dev (distractor), the shared data's tune split"},
    "musique": {"licence": "CC BY 4.0", "source": "MuSiQue-Ans dev, the shared data's tune split"},
}
"""Where the labelled questions of each dataset come from, and their licence."""


@dataclass(frozen=True)
class LabelRun:
    """One bench run read as labels.

    Attributes:
        name: The run's ``dataset/split`` (the labelled questions' source).
        dataset: The dataset (``hotpotqa`` or ``musique``).
        split: The split (always ``tune``: test runs are refused).
        model: The model the strategies ran with.
        labels: Questions per oracle label (A, B, C).
        correct_f1: The F1 at which an answer counted as correct.
    """

    name: str
    dataset: str
    split: str
    model: str
    labels: dict[str, int]
    correct_f1: float

    def describe(self) -> dict[str, Any]:
        """Return the run as recorded in the manifest (with its data's source and licence)."""
        return {"name": self.name, "model": self.model, "labels": self.labels,
                "correct_f1": self.correct_f1, **DATASET_SOURCES.get(self.dataset, {})}


def read_label_run(path: Path) -> tuple[LabelRun, list[LabelledQuestion]]:
    """Return a bench run's outcome-labelled questions (only those all three strategies ran).

    Raises:
        InputError: If the folder is not a bench qa run, was run on a test split, or lacks one
            of `LABEL_STRATEGIES`.
    """
    from ragtune.evaluation.report import CORRECT_F1
    from ragtune.evaluation.runner import load_cache

    path = Path(path)
    try:
        settings = json.loads((path / "run.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"label run {path.name}: no readable run.json (is it a "
                         f"`ragtune bench qa` output folder?): {exc}") from None
    dataset, split = settings.get("dataset"), settings.get("split")
    if not isinstance(dataset, str) or not isinstance(split, str):
        raise InputError(f"label run {path.name}: run.json names no dataset and split")
    if split != "tune":
        # Labels from test questions would leak the reported numbers into the router.
        raise InputError(f"label run {path.name}: split {split!r}; labels come from tune data "
                         "only, never from test questions")
    results = {name: load_cache(path, name) for name in LABEL_STRATEGIES}
    empty = [name for name, rows in results.items() if not rows]
    if empty:
        raise InputError(f"label run {path.name}: no results for {', '.join(empty)}; run "
                         f"`ragtune bench qa --strategies {' '.join(LABEL_STRATEGIES)}`")
    common = sorted(set.intersection(*(set(rows) for rows in results.values())))
    letters = {qid: oracle_label({name: rows[qid] for name, rows in results.items()})
               for qid in common}
    items = [LabelledQuestion(str(results["rag"][qid]["question"]), ORACLE_ACTIONS[letter],
                              f"{dataset}/{split}", f"{dataset}:{qid}")
             for qid, letter in letters.items()]
    counts = Counter(letters.values())
    run = LabelRun(name=f"{dataset}/{split}", dataset=dataset, split=split,
                   model=str(settings.get("model", "")), labels=dict(sorted(counts.items())),
                   correct_f1=CORRECT_F1)
    return run, items


def oracle_label(rows: dict[str, dict[str, Any]]) -> str:
    """Return the oracle letter of one question from its per-strategy records.

    The first of no-retrieval (A) and rag (B) whose answer is correct (F1 >= `CORRECT_F1`, no
    error), else C: `ragtune.evaluation.report.oracle_rows`'s rule, which falls back to C whether
    or not multi-step was correct.
    """
    from ragtune.evaluation.report import CORRECT_F1, ORACLE_ORDER

    for name, letter in ORACLE_ORDER[:-1]:
        row = rows.get(name)
        if row is not None and row["f1"] >= CORRECT_F1 and not row.get("error"):
            return letter
    return ORACLE_ORDER[-1][1]


def read_label_runs(paths: Sequence[Path]) -> tuple[list[LabelRun], list[LabelledQuestion]]:
    """Return every run's description and their questions together (each question once)."""
    runs, items, seen = [], [], set()
    for path in paths:
        run, labelled = read_label_run(path)
        runs.append(run)
        for item in labelled:
            if item.group not in seen:
                seen.add(item.group)
                items.append(item)
    return runs, items
