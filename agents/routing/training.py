"""The classifier's training run: data, split, fit, evaluation, latency and the saved artifact.

Owns `TrainingArguments` and `train_classifier_artifact`, the linear run behind
``python -m ragtune.agents.router train``: load the labelled questions of `data.TRAIN_FILES` (and
optional specialist JSONL files), hold out a seeded, grouped 20%, embed everything once, fit, score
the classifier and the rules on the held-out part and (report only, never fitted on) on the
questions of `data.TEST_FILES` not seen in training, measure decision latency, and save the
artifact with all of that in its manifest.
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

from . import data
from .classifier import ClassifierRouter, embed_questions
from .decision import ACTIONS, Router
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
        specialist: JSONL files of specialist questions; none: no specialist class.
        seed: Seed of the held-out split and of the regularisation search.
        held_out: Fraction of question groups held out for the reported accuracy.
        l2: Regularisation strength; None: chosen on an inner validation split.
        lexical: Append the lexical features to the embedding.
        test_report: Also score on the test files (reported, never fitted on).
        latency_samples: Questions timed for the latency figures.
    """

    data_dir: Path
    out: Path
    specialist: list[Path] = field(default_factory=list)
    seed: int = 0
    held_out: float = 0.2
    l2: float | None = None
    lexical: bool = True
    test_report: bool = True
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


def score_router(router: Router, items: Sequence[data.LabelledQuestion]) -> dict[str, Any]:
    """Return `score_predictions` for any router, routing the questions one by one."""
    allowed = tuple(a for a in ACTIONS if any(i.label == a for i in items)) or ACTIONS
    predicted = [router.route(i.text, allowed=allowed).action for i in items]
    return score_predictions([i.label for i in items], predicted)


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
    items = data.load_questions(args.data_dir, data.TRAIN_FILES)
    for path in args.specialist:
        items += data.read_specialist_questions(path)
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
        [(i.text, i.label) for i in train], embeddings,
        seed=args.seed, l2=args.l2, lexical=args.lexical, vectors=train_vectors,
    )
    fit_seconds = time.perf_counter() - started
    held_scores = score_classifier(router, held, held_vectors)
    ablation = ClassifierRouter.train(
        [(i.text, i.label) for i in train], embeddings,
        seed=args.seed, l2=router.manifest["l2"], lexical=not args.lexical, vectors=train_vectors,
    )
    rules = RulesRouter()
    rules_held = score_router(rules, held)
    report(f"fitted in {fit_seconds:.1f} s (l2={router.manifest['l2']}); held-out accuracy "
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
        "data_sources": {
            "train_files": list(data.TRAIN_FILES) + [str(p) for p in args.specialist],
            "questions_per_source": data.count_sources(items),
            "labelling": "multi-hop questions -> decompose; natural single-hop MuSiQue "
                         "decomposition steps (#n replaced by the earlier answer) -> retrieve; "
                         "Break steps are QDMR operations, not questions, so unused",
            "train_examples_per_label": data.count_labels(train),
            "held_out_examples_per_label": data.count_labels(held),
        },
    }
    if args.test_report:
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
