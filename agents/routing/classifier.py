"""The classifier policy: sentence embedding (+ lexical features) into a calibrated softmax model.

Owns `ClassifierRouter`: training it from labelled questions (scikit-learn, see `softmax`),
routing with probabilities masked to the allowed actions (numpy only), and its on-disk artifact, a
directory holding ``weights.npz`` (plain arrays, loaded with ``allow_pickle=False``) and
``manifest.json`` (format version, embedding model and dimension, labels, features, metrics,
example counts, data sources, the weights' SHA-256). An artifact is only loaded with the embedding
model it was trained on; version 1 artifacts (before calibration) load with temperature 1.
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
from .softmax import SoftmaxModel, accuracy, fit_logistic

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings

ARTIFACT_FORMAT = "ragtune-router-classifier"
"""The ``format`` field of a classifier manifest."""

ARTIFACT_VERSION = 2
"""The manifest version this code writes (2: calibrated, with a temperature)."""

READABLE_VERSIONS = (1, 2)
"""The manifest versions this code reads."""

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "weights.npz"
REQUIRED_FIELDS = ("format", "version", "embedding", "labels", "features", "weights")
"""Manifest fields without which an artifact is refused."""


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
        lexical_names: The lexical features following the embedding in the feature vector, in
            order (empty: the embedding alone).
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
        lexical: bool | Sequence[str],
        manifest: dict[str, Any] | None = None,
    ) -> None:
        """Wrap fitted weights; use `train` or `load` rather than calling this directly.

        `lexical` is True (every feature of `LEXICAL_FEATURES`), False (none) or the names.
        """
        self.embeddings = embeddings
        self.model = model
        self.labels: tuple[Action, ...] = tuple(labels)
        if isinstance(lexical, bool):
            lexical = LEXICAL_FEATURES if lexical else ()
        self.lexical_names: tuple[str, ...] = tuple(lexical)
        self.manifest: dict[str, Any] = dict(manifest or {})

    @property
    def lexical(self) -> bool:
        """Whether any lexical feature follows the embedding."""
        return bool(self.lexical_names)

    @classmethod
    def train(
        cls,
        examples: Sequence[tuple[str, Action]],
        embeddings: Embeddings,
        *,
        seed: int = 0,
        c: float | None = None,
        lexical: bool = True,
        vectors: np.ndarray | None = None,
        class_weight: str | None = None,
    ) -> ClassifierRouter:
        """Train a calibrated classifier on (question, action) pairs (see `fit_logistic`).

        Args:
            examples: Labelled questions; at least two distinct actions.
            embeddings: The embedding model (recorded in the manifest).
            seed: Seed of the cross-validation folds that choose `c` and fit the temperature.
            c: Inverse regularisation strength; None chooses one from `C_GRID` by
                cross-validated accuracy.
            lexical: Whether to append the lexical features to the embedding.
            vectors: Precomputed `embed_questions` output for the examples' questions.
            class_weight: None (every example counts once: the classes' natural frequencies,
                which is what accuracy against the oracle rewards) or ``"balanced"``.

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
        model, fit = fit_logistic(x, y, len(labels), c=c, class_weight=class_weight, seed=seed)
        counts = {a: int((y == i).sum()) for i, a in enumerate(labels)}
        manifest = {
            "fit": {
                "library": "scikit-learn LogisticRegression (lbfgs, multinomial), standardised "
                           "features, temperature scaling on out-of-fold logits",
                "c": fit.c, "class_weight": class_weight, "seed": seed, "folds": fit.folds,
                "cv_accuracy_by_c": fit.cv_accuracy, "temperature": fit.temperature,
                "out_of_fold_calibration_error": {"before_temperature": fit.ece_before,
                                                  "after_temperature": fit.ece_after},
            },
            "examples_per_label": counts,
            "train_accuracy": round(accuracy(model.probabilities(x), y), 4),
        }
        return cls(embeddings, model, labels, lexical=lexical, manifest=manifest)

    def features(self, questions: Sequence[str], vectors: np.ndarray | None = None) -> np.ndarray:
        """Return the classifier's feature matrix for `questions` (embedding them unless given)."""
        if vectors is None:
            vectors = embed_questions(self.embeddings, questions)
        return build_features(vectors, questions, lexical=self.lexical_names)

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
            temperature=np.asarray([self.model.temperature], dtype=np.float32),
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
                "lexical": list(self.lexical_names),
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
        features = manifest.get("features")
        lexical_names = features.get("lexical") if isinstance(features, dict) else None
        if (
            not isinstance(labels, list) or len(labels) < 2 or not set(labels) <= set(ACTIONS)
            or len(set(labels)) != len(labels) or not isinstance(lexical_names, list)
            or not set(lexical_names) <= set(LEXICAL_FEATURES)
            or len(set(lexical_names)) != len(lexical_names)
        ):
            raise ConfigError(f"router artifact {path}: manifest has unusable labels or features")
        model = _read_weights(
            path, manifest, n_features=dim + len(lexical_names), n_labels=len(labels)
        )
        core = {k: manifest[k] for k in manifest if k not in _CORE_FIELDS}
        return cls(embeddings, model, labels, lexical=lexical_names, manifest=core)


_CORE_FIELDS = frozenset(
    {"format", "version", "created_at", "embedding", "labels", "features", "weights"}
)


def build_features(vectors: np.ndarray, questions: Sequence[str], *,
                   lexical: bool | Sequence[str]) -> np.ndarray:
    """Return embedding vectors, with the `lexical` features appended (True: all of them)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    names = (LEXICAL_FEATURES if lexical else ()) if isinstance(lexical, bool) else lexical
    return np.hstack([vectors, lexical_matrix(questions, names)]) if names else vectors


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
    if manifest.get("version") not in READABLE_VERSIONS:
        raise ConfigError(
            f"router artifact {path}: manifest version {manifest.get('version')!r}, this ragtune "
            f"reads versions {', '.join(map(str, READABLE_VERSIONS))}; retrain it"
        )
    missing = [k for k in REQUIRED_FIELDS if k not in manifest]
    if missing:
        raise ConfigError(f"router artifact {path}: {MANIFEST_FILE} lacks {', '.join(missing)}")
    return manifest


def _read_weights(
    path: Path, manifest: dict[str, Any], *, n_features: int, n_labels: int
) -> SoftmaxModel:
    """Return the weights of an artifact after checking their hash, shapes and values."""
    weights_path = path / WEIGHTS_FILE
    recorded = manifest.get("weights")
    expected = recorded.get("sha256") if isinstance(recorded, dict) else None
    if not isinstance(expected, str):
        raise ConfigError(f"router artifact {path}: {MANIFEST_FILE} records no weights sha256")
    try:
        actual = _sha256(weights_path)
    except OSError as exc:
        raise ConfigError(f"router artifact {path}: cannot read {WEIGHTS_FILE}: {exc}") from None
    if actual != expected:
        raise ConfigError(
            f"router artifact {path}: {WEIGHTS_FILE} does not match its manifest (corrupt?)"
        )
    # Version 1 predates calibration: its probabilities are the fitted ones (temperature 1).
    names = _ARRAYS + (("temperature",) if manifest["version"] >= 2 else ())
    try:
        with np.load(weights_path, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k], dtype=np.float64) for k in names}
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"router artifact {path}: corrupt {WEIGHTS_FILE}: {exc}") from None
    shapes = {"weights": (n_features, n_labels), "bias": (n_labels,), "mean": (n_features,),
              "scale": (n_features,), "temperature": (1,)}
    for key in names:
        shape = shapes[key]
        if arrays[key].shape != shape or not np.isfinite(arrays[key]).all():
            raise ConfigError(
                f"router artifact {path}: {WEIGHTS_FILE}[{key}] is not a finite {shape} array"
            )
    if (arrays["scale"] <= 0).any():
        raise ConfigError(f"router artifact {path}: {WEIGHTS_FILE}[scale] has non-positive values")
    temperature = float(arrays.pop("temperature", np.ones(1))[0])
    if temperature <= 0:
        raise ConfigError(f"router artifact {path}: {WEIGHTS_FILE}[temperature] must be positive")
    return SoftmaxModel(**arrays, temperature=temperature)
