"""The classifier's training run: data, split, fit, evaluation, latency and the saved artifact.

Owns `TrainingArguments` and `train_classifier_artifact`, the linear run behind
``python -m ragtune.agents.router train``: load the labelled questions, hold out a seeded, grouped
20%, embed everything once, fit, score the classifier (and the rules, and optionally an earlier
artifact) on the held-out part, measure decision latency, and save the artifact with all of that
in its manifest.

Two kinds of labels:

- outcome labels (``--labels RUN_DIR ...``, the shipped artifact): each tune question labelled by
  the cheapest strategy that answered it correctly (`outcomes`); the held-out score is accuracy
  against the oracle, the bench's router metric;
- structure labels (no ``--labels``): multi-hop questions of `data.TRAIN_FILES` -> decompose,
  their single-hop steps -> retrieve, also scored (report only) on `data.TEST_FILES`.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import data, outcomes
from .classifier import ClassifierRouter, embed_questions
from .decision import ACTIONS, Action, Router
from .rules import RulesRouter
from .softmax import expected_calibration_error

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings

log = logging.getLogger(__name__)


@dataclass
class TrainingArguments:
    """What a classifier training run reads, how it fits, and where it writes.

    Attributes:
        data_dir: The shared QA data folder (holding hotpotqa/, musique/, train/).
        out: The artifact directory to write.
        label_runs: ``ragtune bench qa`` output folders on tune splits: outcome labels. None:
            structure labels from the data folder.
        specialist: JSONL files of specialist questions; none: no specialist class.
        seed: Seed of the held-out split and of the cross-validation.
        held_out: Fraction of question groups held out for the reported accuracy.
        c: Inverse regularisation strength; None: chosen by cross-validation.
        class_weight: None or ``"balanced"`` (see `ClassifierRouter.train`).
        lexical: Append the lexical features to the embedding.
        test_report: Also score on the test files (structure labels only; never fitted on).
        compare: An earlier artifact to score on the same held-out questions.
        min_class_examples: Outcome labels only: an action labelled on fewer questions is
            trained as the next costlier one (in practice A, no retrieval, as B: a 270M model
            rarely knows an answer unaided), so the router never picks a route it has barely
            seen; scores still count those questions under their true label.
        latency_samples: Questions timed for the latency figures.
    """

    data_dir: Path
    out: Path
    label_runs: list[Path] = field(default_factory=list)
    specialist: list[Path] = field(default_factory=list)
    seed: int = 0
    held_out: float = 0.2
    c: float | None = None
    class_weight: str | None = None
    lexical: bool = True
    test_report: bool = True
    compare: Path | None = None
    min_class_examples: int = 20
    latency_samples: int = 100


def score_predictions(labels: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """Return accuracy, balanced accuracy, per-label recall and the count of a prediction run."""
    if not labels:
        return {"n": 0}
    recall = {
        label: round(sum(p == label for p, t in zip(predicted, labels, strict=True) if t == label)
                     / sum(t == label for t in labels), 4)
        for label in sorted(set(labels))
    }
    correct = sum(p == t for p, t in zip(predicted, labels, strict=True))
    return {
        "n": len(labels),
        "accuracy": round(correct / len(labels), 4),
        "balanced_accuracy": round(statistics.mean(recall.values()), 4),
        "recall": recall,
    }


def score_router(router: Router, items: Sequence[data.LabelledQuestion],
                 allowed: Sequence[str] | None = None) -> dict[str, Any]:
    """Return `score_predictions` for any router, routing the questions one by one.

    `allowed` defaults to the actions the items are labelled with.
    """
    if allowed is None:
        allowed = tuple(a for a in ACTIONS if any(i.label == a for i in items)) or ACTIONS
    predicted = [router.route(i.text, allowed=tuple(allowed)).action  # type: ignore[arg-type]
                 for i in items]
    return score_predictions([i.label for i in items], predicted)


def oracle_scores(items: Sequence[data.LabelledQuestion], predicted: Sequence[str]
                  ) -> dict[str, Any]:
    """Return `score_predictions` in oracle letters (A/B/C), overall and per source."""
    letters = [outcomes.ACTION_LABELS.get(i.label, "?") for i in items]
    guessed = [outcomes.ACTION_LABELS.get(p, "?") for p in predicted]
    scores = score_predictions(letters, guessed)
    scores["by_source"] = {
        source: score_predictions([t for t, i in zip(letters, items, strict=True)
                                   if i.source == source],
                                  [g for g, i in zip(guessed, items, strict=True)
                                   if i.source == source])["accuracy"]
        for source in sorted({i.source for i in items})
    }
    return scores


def classifier_predictions(router: ClassifierRouter, items: Sequence[data.LabelledQuestion],
                           vectors: np.ndarray) -> list[str]:
    """Return the classifier's most probable action per item, in one batch."""
    if not items:
        return []
    probs = router.predict_proba([i.text for i in items], vectors)
    return [router.labels[k] for k in probs.argmax(axis=1)]


def score_classifier(
    router: ClassifierRouter, items: Sequence[data.LabelledQuestion], vectors: np.ndarray
) -> dict[str, Any]:
    """Return `score_predictions` plus calibration error for a classifier, in one batch."""
    if not items:
        return {"n": 0}
    probs = router.predict_proba([i.text for i in items], vectors)
    predicted = [router.labels[k] for k in probs.argmax(axis=1)]
    scores = score_predictions([i.label for i in items], predicted)
    known = np.asarray(
        [router.labels.index(i.label) if i.label in router.labels else -1 for i in items]
    )
    scores["calibration_error"] = round(expected_calibration_error(probs, known), 4)
    return scores


def measure_latency(
    router: ClassifierRouter, questions: Sequence[str], vectors: np.ndarray
) -> dict[str, float | int]:
    """Return the median milliseconds per decision, with and without computing the embedding.

    The machine's load average is recorded with them: on a busy machine the embedding's time
    (not the classifier's) grows many times over.
    """
    with_embedding, without = [], []
    for question, vector in zip(questions, vectors, strict=True):
        start = time.perf_counter()
        router.route(question)
        with_embedding.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        router.predict_proba([question], vector[None, :])
        without.append((time.perf_counter() - start) * 1000)
    return {
        "median_ms_with_embedding": round(statistics.median(with_embedding), 2),
        "median_ms_without_embedding": round(statistics.median(without), 3),
        "questions_timed": len(without),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count() or 0,
    }


def train_classifier_artifact(
    args: TrainingArguments,
    embeddings: Embeddings | None = None,
    *,
    report: Callable[[str], None] = log.info,
) -> ClassifierRouter:
    """Train, evaluate and save a classifier router as `args` says; return it.

    Args:
        args: The run's settings.
        embeddings: The embedding model; the default one (`load_embeddings()`) when None.
        report: Called with one line per stage (progress and results).
    """
    if embeddings is None:
        from ragtune.tools.embeddings import load_embeddings

        embeddings = load_embeddings()
    runs: list[outcomes.LabelRun] = []
    if args.label_runs:
        runs, items = outcomes.read_label_runs(args.label_runs)
    else:
        items = data.load_questions(args.data_dir, data.TRAIN_FILES)
    for path in args.specialist:
        items += data.read_specialist_questions(path)
    relabel = rare_classes(items, args.min_class_examples) if runs else {}
    if relabel:
        report(f"trained as the next costlier route (too few examples): {relabel}")
    train, held = data.split_held_out(items, args.held_out, args.seed)
    report(f"{len(items)} questions {data.count_labels(items)}: "
           f"{len(train)} train, {len(held)} held out")

    started = time.perf_counter()
    vectors = embed_questions(embeddings, [i.text for i in items])
    report(f"embedded {len(items)} questions in {time.perf_counter() - started:.0f} s")
    row = {id(item): k for k, item in enumerate(items)}
    train_vectors = vectors[[row[id(i)] for i in train]]
    held_vectors = vectors[[row[id(i)] for i in held]]

    started = time.perf_counter()
    router = ClassifierRouter.train(
        [(i.text, relabel.get(i.label, i.label)) for i in train], embeddings, seed=args.seed,
        c=args.c,
        lexical=args.lexical, vectors=train_vectors, class_weight=args.class_weight,
    )
    fit_seconds = time.perf_counter() - started
    held_scores = score_classifier(router, held, held_vectors)
    ablation = ClassifierRouter.train(
        [(i.text, relabel.get(i.label, i.label)) for i in train], embeddings, seed=args.seed,
        c=router.manifest["fit"]["c"], lexical=not args.lexical, vectors=train_vectors,
        class_weight=args.class_weight,
    )
    rules = RulesRouter()
    rules_held = score_router(rules, held)
    report(f"fitted in {fit_seconds:.1f} s (C={router.manifest['fit']['c']}, temperature "
           f"{router.manifest['fit']['temperature']}); held-out accuracy "
           f"{held_scores['accuracy']} (lexical={args.lexical}), "
           f"{score_classifier(ablation, held, held_vectors)['accuracy']} (lexical="
           f"{not args.lexical}); rules {rules_held['accuracy']}")

    manifest: dict[str, Any] = {
        "held_out_accuracy": held_scores["accuracy"],
        "held_out": {"fraction": args.held_out, "seed": args.seed, "classifier": held_scores,
                     "rules": rules_held,
                     f"classifier_lexical_{str(not args.lexical).lower()}":
                         score_classifier(ablation, held, held_vectors)},
        "fit_seconds": round(fit_seconds, 2),
    }
    if runs:
        manifest["labels_from"] = "outcomes"
        manifest["data_sources"] = {
            "label_runs": [run.describe() for run in runs],
            "specialist_files": [p.name for p in args.specialist],
            "questions_per_source": data.count_sources(items),
            "labelling": "Adaptive-RAG's oracle (ragtune.evaluation.report.oracle_rows): the "
                         "cheapest of no-retrieval (A -> specialist), rag (B -> retrieve) and "
                         "multi-step (C -> decompose) whose answer scored F1 >= "
                         f"{runs[0].correct_f1}; none correct -> C. The threshold is the bench "
                         "oracle's own, so the router learns the labels it is scored against. "
                         "Tune splits only; no test question, no 2WikiMultiHopQA",
            "train_examples_per_label": data.count_labels(train),
            "held_out_examples_per_label": data.count_labels(held),
            "trained_as": {
                "classes": relabel, "min_class_examples": args.min_class_examples,
                "note": "an action with fewer labelled questions is trained as the next costlier "
                        "route; accuracies count those questions under their true label",
            },
        }
        manifest["held_out"]["oracle_accuracy"] = _oracle_comparison(
            router, rules, held, held_vectors, args.compare, embeddings, report)
        manifest["cross_validated"] = cross_validated_oracle(
            items, vectors, embeddings, args, report, relabel=relabel)
    else:
        manifest["labels_from"] = "structure"
        manifest["data_sources"] = {
            "train_files": list(data.TRAIN_FILES) + [str(p) for p in args.specialist],
            "questions_per_source": data.count_sources(items),
            "labelling": "multi-hop questions -> decompose; natural single-hop MuSiQue "
                         "decomposition steps (#n replaced by the earlier answer) -> retrieve; "
                         "Break steps are QDMR operations, not questions, so unused",
            "train_examples_per_label": data.count_labels(train),
            "held_out_examples_per_label": data.count_labels(held),
        }
    if args.test_report and not runs:
        seen = {data.normalise(i.text) for i in items}
        test = [t for t in data.load_questions(args.data_dir, data.TEST_FILES)
                if data.normalise(t.text) not in seen]
        test_vectors = embed_questions(embeddings, [t.text for t in test])
        test_scores = score_classifier(router, test, test_vectors)
        rules_test = score_router(rules, test)
        manifest["test_accuracy"] = test_scores["accuracy"]
        manifest["test_report"] = {
            "files": list(data.TEST_FILES), "note": "reported only, never trained or tuned on; "
            "questions also present in the training files are left out",
            "classifier": test_scores, "rules": rules_test,
        }
        report(f"test files (report only): classifier {test_scores['accuracy']}, "
               f"rules {rules_test['accuracy']} on {len(test)} questions")
    sample = min(args.latency_samples, len(held))
    if sample:
        manifest["latency"] = measure_latency(
            router, [i.text for i in held[:sample]], held_vectors[:sample])
        report(f"latency: {manifest['latency']}")
    router.manifest.update(manifest)
    router.save(args.out)
    report(f"saved {args.out}")
    return router


def _oracle_comparison(
    router: ClassifierRouter, rules: RulesRouter, held: Sequence[data.LabelledQuestion],
    held_vectors: np.ndarray, compare: Path | None, embeddings: Embeddings,
    report: Callable[[str], None],
) -> dict[str, Any]:
    """Held-out accuracy against the oracle of the new classifier and its baselines."""
    from collections import Counter

    majority = Counter(i.label for i in held).most_common(1)[0][0] if held else "decompose"
    compared: dict[str, Any] = {
        "classifier": oracle_scores(held, classifier_predictions(router, held, held_vectors)),
        "rules": oracle_scores(held, [rules.route(i.text).action for i in held]),
        f"always_{majority}": oracle_scores(held, [majority] * len(held)),
    }
    if compare is not None:
        earlier = ClassifierRouter.load(compare, embeddings)
        compared["compared_artifact"] = {
            "labels_from": earlier.manifest.get("labels_from", "structure"),
            "created_at": json_created_at(compare),
            **oracle_scores(held, classifier_predictions(earlier, held, held_vectors)),
        }
    report("held-out accuracy against the oracle: " + ", ".join(
        f"{name} {scores['accuracy']}" for name, scores in compared.items()))
    return compared


def cross_validated_oracle(
    items: Sequence[data.LabelledQuestion], vectors: np.ndarray, embeddings: Embeddings,
    args: TrainingArguments, report: Callable[[str], None], folds: int = 5,
    relabel: dict[Action, Action] | None = None,
) -> dict[str, Any]:
    """Out-of-fold accuracy against the oracle over every labelled question.

    Each question is predicted by a classifier trained (the same procedure, ``C`` chosen inside)
    on the other folds; folds are seeded hashes of the question's group, like the held-out split.
    With a few hundred labels the 20% held out is small, so this is the steadier number; the
    compared artifact and the majority label of the training folds are scored on the same folds.
    `relabel` maps a label to the one it is trained as (see `rare_classes`).
    """
    relabel = relabel or {}
    import hashlib
    from collections import Counter

    fold_of = np.asarray([int.from_bytes(hashlib.sha256(
        f"cv{args.seed}:{i.group}".encode()).digest()[:8], "big") % folds for i in items])
    predicted: list[str] = [""] * len(items)
    majority: list[str] = [""] * len(items)
    for k in range(folds):
        held = [int(n) for n in np.flatnonzero(fold_of == k)]
        train = [int(n) for n in np.flatnonzero(fold_of != k)]
        train_labels = [relabel.get(items[t].label, items[t].label) for t in train]
        if not len(held) or len(set(train_labels)) < 2:
            continue
        model = ClassifierRouter.train(
            [(items[t].text, label) for t, label in zip(train, train_labels, strict=True)],
            embeddings, seed=args.seed,
            c=args.c, lexical=args.lexical, vectors=vectors[train],
            class_weight=args.class_weight)
        guesses = classifier_predictions(model, [items[h] for h in held], vectors[held])
        common = Counter(train_labels).most_common(1)[0][0]
        for h, guess in zip(held, guesses, strict=True):
            predicted[h], majority[h] = guess, common
    scored = [n for n, p in enumerate(predicted) if p]
    chosen = [items[n] for n in scored]
    result: dict[str, Any] = {
        "folds": folds, "questions": len(chosen),
        "classifier": oracle_scores(chosen, [predicted[n] for n in scored]),
        "training_folds_majority": oracle_scores(chosen, [majority[n] for n in scored]),
    }
    if args.compare is not None:
        earlier = ClassifierRouter.load(args.compare, embeddings)
        result["compared_artifact"] = oracle_scores(
            chosen, classifier_predictions(earlier, chosen, vectors[scored]))
    report("cross-validated accuracy against the oracle: " + ", ".join(
        f"{name} {scores['accuracy']}" for name, scores in result.items()
        if isinstance(scores, dict)))
    return result


def rare_classes(items: Sequence[data.LabelledQuestion], minimum: int) -> dict[Action, Action]:
    """Return {label: label to train it as} for outcome labels with fewer than `minimum` items.

    A rare A (``specialist``, no retrieval) becomes B (``retrieve``), a rare B becomes C
    (``decompose``): the next costlier route, which answers whatever the cheaper one does. C is
    never merged (it is where unanswered questions go).
    """
    from collections import Counter

    counts: Counter[str] = Counter(i.label for i in items)
    order: tuple[Action, ...] = ("specialist", "retrieve", "decompose")
    relabel: dict[Action, Action] = {}
    for cheaper, costlier in zip(order, order[1:], strict=False):
        if 0 < counts[cheaper] < minimum:
            relabel[cheaper] = relabel.get(costlier, costlier)
            counts[costlier] += counts.pop(cheaper)
    # A merged into B that is itself merged into C goes to C.
    return {k: relabel.get(v, v) for k, v in relabel.items()}


def json_created_at(path: Path) -> str | None:
    """Return the ``created_at`` of an artifact's manifest (None when unreadable)."""
    import json

    try:
        return str(json.loads((path / "manifest.json").read_text(encoding="utf-8"))["created_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
