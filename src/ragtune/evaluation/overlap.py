"""Which of a run's questions the adapters it uses trained on, and the scores without those.

An adapter answers the questions it trained on better than new ones. Given gold paragraphs, the
shipped `reader@1` scores the HotpotQA tune split at F1 0.650 and the test split at 0.528, while
the base model, which trained on neither, scores them alike (0.343 and 0.333). A `bench qa` run on
a split an adapter learned from is therefore optimistic, and so is anything chosen from it (the
read-first threshold, the router's outcome labels).

`ragtune finetune` records a key of every sampled training question in the adapter's manifest
(`dataset.question_keys`, see `agents.finetune.datasets.question_key`); `training_overlap` counts
the run's questions among them and scores every strategy again on the questions no adapter trained
on. An adapter whose manifest records no keys is reported as such: its overlap is unknown.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ragtune.agents.finetune.datasets import question_key
from ragtune.evaluation.datasets import QAItem


@dataclass(frozen=True)
class TrainedAdapter:
    """An adapter a run uses and the questions it trained on.

    Attributes:
        role: What the run uses it for ("reader", "decomposer").
        ref: The adapter version (`NAME@N`).
        question_keys: Keys of its training questions; None when its manifest records none.
    """

    role: str
    ref: str
    question_keys: frozenset[str] | None


def adapters_in_use(models: Mapping[str, Any]) -> list[TrainedAdapter]:
    """The local adapters that `models` (role -> chat model) serve by default, with their keys.

    Models that serve no local adapter (the base model, an API model, an engine's served adapter)
    are left out: ragtune has no manifest of theirs.
    """
    from ragtune.agents.specialist_model import SpecialistModel

    found = []
    for role, model in models.items():
        if not isinstance(model, SpecialistModel) or not model.adapter:
            continue
        version = model.registry.resolve(model.adapter)
        keys = version.manifest.get("dataset", {}).get("question_keys")
        found.append(TrainedAdapter(role, version.ref,
                                    frozenset(keys) if isinstance(keys, list) else None))
    return found


def unseen_questions(questions: Sequence[QAItem],
                     adapters: Sequence[TrainedAdapter]) -> list[QAItem]:
    """`questions` without those any of `adapters` trained on, in their order.

    Raises:
        ConfigError: An adapter's manifest records no training questions (nothing to filter by).
    """
    from ragtune.errors import ConfigError

    unknown = [a.ref for a in adapters if a.question_keys is None]
    if unknown:
        raise ConfigError(f"{', '.join(unknown)} record no training questions, so the questions "
                          "they trained on cannot be left out; retrain them with this version "
                          "of `ragtune finetune`, or run without --unseen-only.")
    trained = frozenset().union(*(a.question_keys or () for a in adapters))
    return [q for q in questions if question_key(q.question) not in trained]


def training_overlap(questions: Sequence[QAItem], adapters: Sequence[TrainedAdapter],
                     results: Mapping[str, Mapping[str, dict[str, Any]]]) -> dict[str, Any] | None:
    """How many of `questions` each adapter trained on, and each strategy's F1 without them.

    Returns None when the run uses no local adapter. `unseen` holds the questions no adapter with
    recorded keys trained on, and the mean F1 of every strategy in `results` on them (only when
    some question was trained on; otherwise the run's own scores already are that).
    """
    if not adapters:
        return None
    keys = {q.id: question_key(q.question) for q in questions}
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    for adapter in adapters:
        if adapter.question_keys is None:
            rows.append({"role": adapter.role, "ref": adapter.ref, "trained_questions": None})
            continue
        hits = {qid for qid, key in keys.items() if key in adapter.question_keys}
        seen |= hits
        rows.append({"role": adapter.role, "ref": adapter.ref, "trained_questions": len(hits)})
    report: dict[str, Any] = {"questions": len(questions), "adapters": rows,
                              "trained_questions": len(seen)}
    if seen:
        unseen = [qid for qid in keys if qid not in seen]
        f1 = {}
        for name, by_id in results.items():
            scores = [by_id[qid]["f1"] for qid in unseen if qid in by_id]
            if scores:
                f1[name] = round(statistics.mean(scores), 4)
        report["unseen"] = {"questions": len(unseen), "f1": f1}
    return report


def overlap_lines(overlap: Mapping[str, Any] | None) -> list[str]:
    """The report's sentences on training overlap (none when no question was trained on)."""
    if not overlap:
        return []
    lines = []
    if overlap.get("excluded_trained"):
        lines.append(f"Run on unseen questions only: {overlap['excluded_trained']} questions the "
                     "adapters trained on were left out.")
    unknown = [a["ref"] for a in overlap["adapters"] if a["trained_questions"] is None]
    trained = [a for a in overlap["adapters"] if a["trained_questions"]]
    if trained:
        said = ", ".join(f"{a['ref']} ({a['role']}) on {a['trained_questions']}" for a in trained)
        unseen = overlap.get("unseen", {})
        scores = ", ".join(f"{name} {f1:.3f}" for name, f1 in unseen.get("f1", {}).items())
        lines.append(f"Training overlap: adapters this run uses trained on some of these "
                     f"{overlap['questions']} questions ({said}), so scores on those are "
                     f"optimistic. F1 on the {unseen.get('questions', 0)} questions no adapter "
                     f"trained on: {scores}.")
    if unknown:
        lines.append(f"{', '.join(unknown)} record no training questions: their overlap with "
                     "these questions is unknown.")
    return lines
