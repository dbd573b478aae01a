"""The classifier policy: sentence embedding (+ lexical features) into a small softmax model.

Owns `ClassifierRouter`: training it from labelled questions, routing with probabilities masked
to the allowed actions, and its on-disk artifact, a directory holding ``weights.npz`` (plain
arrays, loaded with ``allow_pickle=False``) and ``manifest.json`` (format version, embedding model
and dimension, labels, features, metrics, example counts, data sources, the weights' SHA-256). An
artifact is only loaded with the embedding model it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragtune.errors import ConfigError, InputError

from .decision import ACTIONS, Action, RouteDecision, check_allowed, check_question
from .features import LEXICAL_FEATURES, lexical_matrix
from .softmax import SoftmaxModel, accuracy, balanced_weights, fit_softmax

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings

ARTIFACT_FORMAT = "ragtune-router-classifier"
"""The ``format`` field of a classifier manifest."""

ARTIFACT_VERSION = 1
"""The manifest version this code writes and reads."""

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "weights.npz"
L2_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
"""Regularisation strengths tried when `ClassifierRouter.train` is not given one."""


def embed_questions(embeddings: Embeddings, questions: Sequence[str]) -> np.ndarray:
    """Return the L2-normalised (n, dim) float32 embeddings of `questions`.

    Uses the model's ``embed_documents_array`` when it has one (no Python lists of floats), else
    ``embed_documents``; questions are always embedded as documents, at training and routing time
    alike, so the classifier sees the same kind of vector in both.
    """
    if not questions:
        return np.zeros((0, 0), dtype=np.float32)
    fast = getattr(embeddings, "embed_documents_array", None)
    raw = fast(list(questions)) if fast else embeddings.embed_documents(list(questions))
    vectors = np.asarray(raw, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def describe(embeddings: Embeddings) -> tuple[str, int]:
    """Return the embedding model's (name, dimension) as recorded in manifests."""
    from ragtune.tools.embeddings import describe_embeddings

    name, dim = describe_embeddings(embeddings)
    return str(name), int(dim)


class ClassifierRouter:
    """Route by a softmax classifier over question embeddings.

    Attributes:
        policy: Always ``"classifier"``.
        labels: The actions the classifier knows, in column order (``specialist`` only when it
            was trained with specialist examples).
        lexical: Whether the lexical features follow the embedding in the feature vector.
        manifest: Everything recorded about the artifact besides its weights (metrics, counts,
            data sources); a training run may add fields before `save`.
    """

    policy = "classifier"

    def __init__(
        self,
        embeddings: Embeddings,
        model: SoftmaxModel,
        labels: Sequence[Action],
        *,
        lexical: bool,
        manifest: dict[str, Any] | None = None,
    ) -> None:
        """Wrap fitted weights; use `train` or `load` rather than calling this directly."""
        self.embeddings = embeddings
        self.model = model
        self.labels: tuple[Action, ...] = tuple(labels)
        self.lexical = lexical
        self.manifest: dict[str, Any] = dict(manifest or {})

    @classmethod
    def train(
        cls,
        examples: Sequence[tuple[str, Action]],
        embeddings: Embeddings,
        *,
        seed: int = 0,
        l2: float | None = None,
        lexical: bool = True,
        vectors: np.ndarray | None = None,
    ) -> ClassifierRouter:
        """Train a classifier on (question, action) pairs, classes weighted to balance.

        Args:
            examples: Labelled questions; at least two distinct actions.
            embeddings: The embedding model (recorded in the manifest).
            seed: Seed of the inner validation split used to choose `l2`.
            l2: Regularisation strength; None chooses one from `L2_GRID` on a seeded 20% inner
                validation split of `examples`.
            lexical: Whether to append the lexical features to the embedding.
            vectors: Precomputed `embed_questions` output for the examples' questions.

        Raises:
            InputError: If there are fewer than two actions or an unknown action.
        """
        questions = [q for q, _ in examples]
        unknown = {a for _, a in examples} - set(ACTIONS)
        labels = tuple(a for a in ACTIONS if any(label == a for _, label in examples))
        if unknown or len(labels) < 2:
            raise InputError(
                f"a classifier needs examples of at least two of {', '.join(ACTIONS)}; "
                f"got {sorted({a for _, a in examples})}"
            )
        y = np.asarray([labels.index(a) for _, a in examples])
        x = build_features(
            embed_questions(embeddings, questions) if vectors is None else vectors,
            questions,
            lexical=lexical,
        )
        chosen = l2 if l2 is not None else choose_l2(x, y, len(labels), seed=seed)
        weights = balanced_weights(y, len(labels))
        model = fit_softmax(x, y, len(labels), l2=chosen, sample_weight=weights)
        counts = {a: int((y == i).sum()) for i, a in enumerate(labels)}
        manifest = {
            "l2": chosen,
            "seed": seed,
            "examples_per_label": counts,
            "train_accuracy": round(accuracy(model.probabilities(x), y), 4),
        }
        return cls(embeddings, model, labels, lexical=lexical, manifest=manifest)

    def features(self, questions: Sequence[str], vectors: np.ndarray | None = None) -> np.ndarray:
        """Return the classifier's feature matrix for `questions` (embedding them unless given)."""
        if vectors is None:
            vectors = embed_questions(self.embeddings, questions)
        return build_features(vectors, questions, lexical=self.lexical)

    def predict_proba(
        self, questions: Sequence[str], vectors: np.ndarray | None = None
    ) -> np.ndarray:
        """Return the (n, labels) probabilities of `questions`, columns in `labels` order."""
        return self.model.probabilities(self.features(questions, vectors))

    def route(self, question: str, *, allowed: Sequence[Action] = ACTIONS) -> RouteDecision:
        """Choose the most probable allowed action for `question`.

        Probabilities are renormalised over the allowed actions the classifier knows; `scores`
        holds them. When it knows none of them, the first allowed action is chosen.
        """
        start = time.perf_counter()
        allowed = check_allowed(allowed)
        question = check_question(question)
        known = [a for a in allowed if a in self.labels]
        if not known:
            return RouteDecision(
                action=allowed[0],
                policy=self.policy,
                reason=f"classifier knows none of {', '.join(allowed)} (only "
                       f"{', '.join(self.labels)}); chose the first allowed",
                elapsed_ms=(time.perf_counter() - start) * 1000,
            )
        probs = self.predict_proba([question])[0]
        masked = np.asarray([probs[self.labels.index(a)] for a in known])
        masked = masked / masked.sum()
        best = int(masked.argmax())
        action = known[best]
        reason = f"classifier: p({action})={masked[best]:.2f}"
        if len(known) < len(self.labels):
            reason += f" among {', '.join(known)} (raw p={probs[self.labels.index(action)]:.2f})"
        return RouteDecision(
            action=action,
            policy=self.policy,
            reason=reason,
            scores={a: round(float(p), 4) for a, p in zip(known, masked, strict=True)},
            elapsed_ms=(time.perf_counter() - start) * 1000,
        )

    def save(self, path: Path) -> None:
        """Write the artifact directory: ``weights.npz`` and ``manifest.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        weights_path = path / WEIGHTS_FILE
        np.savez(
            weights_path,
            weights=self.model.weights.astype(np.float32),
            bias=self.model.bias.astype(np.float32),
            mean=self.model.mean.astype(np.float32),
            scale=self.model.scale.astype(np.float32),
        )
        name, dim = describe(self.embeddings)
        manifest = {
            "format": ARTIFACT_FORMAT,
            "version": ARTIFACT_VERSION,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "embedding": {"model": name, "dim": dim},
            "labels": list(self.labels),
            "features": {
                "embedding_dim": dim,
                "lexical": list(LEXICAL_FEATURES) if self.lexical else [],
            },
            **{k: v for k, v in self.manifest.items() if k not in _CORE_FIELDS},
            "weights": {"file": WEIGHTS_FILE, "sha256": _sha256(weights_path)},
        }
        (path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path, embeddings: Embeddings) -> ClassifierRouter:
        """Load an artifact directory written by `save`.

        Raises:
            ConfigError: If the manifest or weights are missing, corrupt or of another format
                version, or the artifact was trained on another embedding model or dimension.
        """
        path = Path(path)
        manifest = _read_manifest(path)
        name, dim = describe(embeddings)
        recorded = manifest.get("embedding") or {}
        if recorded.get("model") != name or recorded.get("dim") != dim:
            raise ConfigError(
                f"router artifact {path} was trained on embeddings {recorded.get('model')!r} "
                f"(dim {recorded.get('dim')}), but the embeddings in use are {name!r} (dim {dim}); "
                "retrain it with `python -m ragtune.agents.router train`"
            )
        labels = manifest.get("labels")
        lexical_names = (manifest.get("features") or {}).get("lexical")
        if (
            not isinstance(labels, list) or len(labels) < 2 or not set(labels) <= set(ACTIONS)
            or lexical_names not in ([], list(LEXICAL_FEATURES))
        ):
            raise ConfigError(f"router artifact {path}: manifest has unusable labels or features")
        model = _read_weights(
            path, manifest, n_features=dim + len(lexical_names), n_labels=len(labels)
        )
        core = {k: manifest[k] for k in manifest if k not in _CORE_FIELDS}
        return cls(embeddings, model, labels, lexical=bool(lexical_names), manifest=core)


_CORE_FIELDS = frozenset(
    {"format", "version", "created_at", "embedding", "labels", "features", "weights"}
)


def build_features(vectors: np.ndarray, questions: Sequence[str], *, lexical: bool) -> np.ndarray:
    """Return embedding vectors, with the lexical features appended when `lexical`."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return np.hstack([vectors, lexical_matrix(questions)]) if lexical else vectors


def choose_l2(x: np.ndarray, y: np.ndarray, n_classes: int, *, seed: int) -> float:
    """Return the `L2_GRID` value with the best balanced accuracy on a seeded 20% inner split."""
    rng = np.random.default_rng(seed)
    held = rng.random(len(y)) < 0.2
    if len(set(y[held].tolist())) < n_classes or len(set(y[~held].tolist())) < n_classes:
        return L2_GRID[len(L2_GRID) // 2]
    best, best_score = L2_GRID[0], -1.0
    for l2 in L2_GRID:
        model = fit_softmax(x[~held], y[~held], n_classes, l2=l2,
                            sample_weight=balanced_weights(y[~held], n_classes))
        predicted = model.probabilities(x[held]).argmax(axis=1)
        score = float(np.mean([(predicted[y[held] == c] == c).mean() for c in range(n_classes)]))
        if score > best_score + 1e-9:
            best, best_score = l2, score
    return best


_ARRAYS = ("weights", "bias", "mean", "scale")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_manifest(path: Path) -> dict[str, Any]:
    """Return the parsed manifest of an artifact, checking its format and version."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"router artifact {path}: no {MANIFEST_FILE} there") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"router artifact {path}: unreadable {MANIFEST_FILE}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        raise ConfigError(
            f"router artifact {path}: {MANIFEST_FILE} is not a {ARTIFACT_FORMAT} manifest"
        )
    if manifest.get("version") != ARTIFACT_VERSION:
        raise ConfigError(
            f"router artifact {path}: manifest version {manifest.get('version')!r}, this ragtune "
            f"reads version {ARTIFACT_VERSION}; retrain it"
        )
    return manifest


def _read_weights(
    path: Path, manifest: dict[str, Any], *, n_features: int, n_labels: int
) -> SoftmaxModel:
    """Return the weights of an artifact after checking their hash, shapes and values."""
    weights_path = path / WEIGHTS_FILE
    expected = (manifest.get("weights") or {}).get("sha256")
    try:
        actual = _sha256(weights_path)
    except OSError as exc:
        raise ConfigError(f"router artifact {path}: cannot read {WEIGHTS_FILE}: {exc}") from None
    if actual != expected:
        raise ConfigError(
            f"router artifact {path}: {WEIGHTS_FILE} does not match its manifest (corrupt?)"
        )
    try:
        with np.load(weights_path, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k], dtype=np.float64) for k in _ARRAYS}
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"router artifact {path}: corrupt {WEIGHTS_FILE}: {exc}") from None
    shapes = {"weights": (n_features, n_labels), "bias": (n_labels,), "mean": (n_features,),
              "scale": (n_features,)}
    for key, shape in shapes.items():
        if arrays[key].shape != shape or not np.isfinite(arrays[key]).all():
            raise ConfigError(
                f"router artifact {path}: {WEIGHTS_FILE}[{key}] is not a finite {shape} array"
            )
    return SoftmaxModel(**arrays)
