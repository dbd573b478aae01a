"""Ingestion: source documents in, chunked, embedded and upserted into a `KnowledgeStore`.

The pipeline reads documents lazily (`ragtune.tools.loaders`), splits each into chunks
(langchain-text-splitters), and writes whole sources in batches: one transaction per batch, so a
killed ingest leaves only complete sources behind, and re-running it skips what is already stored
(chunk ids are content hashes) and finishes the rest.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ragtune.errors import ConfigError, InputError
from ragtune.tools.loaders import Format, SourceDocument, iter_documents
from ragtune.tools.store import KnowledgeStore, SourceChunks, UpsertReport

DEFAULT_CHUNK_SIZE = 1000
DEFAULT_CHUNK_OVERLAP = 150
# Sources per write; each batch is one transaction and one embedding call.
DEFAULT_BATCH_CHUNKS = 256
# Larger files are refused (with their size and this limit), never truncated.
DEFAULT_MAX_FILE_BYTES = 20 * 1024 * 1024


@dataclass
class IngestSummary:
    """What an ingest did. `new`, `unchanged` and `replaced` count sources."""

    collection: str
    documents: int = 0
    chunks: int = 0
    new: int = 0
    unchanged: int = 0
    replaced: int = 0
    chunks_written: int = 0
    chunks_deleted: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, report: UpsertReport) -> None:
        """Count one batch's `UpsertReport`."""
        self.new += report.new
        self.unchanged += report.unchanged
        self.replaced += report.replaced
        self.chunks_written += report.chunks_written
        self.chunks_deleted += report.chunks_deleted

    def to_json(self) -> dict[str, Any]:
        """Return the summary as a JSON-ready dict."""
        data = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        return data


def make_splitter(chunk_size: int, chunk_overlap: int) -> Callable[[str], list[str]]:
    """Return a function splitting text into chunks of at most `chunk_size` characters."""
    if chunk_size < 50:
        raise ConfigError(f"--chunk-size must be at least 50 characters, not {chunk_size}")
    if not 0 <= chunk_overlap < chunk_size:
        raise ConfigError(
            f"--chunk-overlap must be between 0 and chunk size - 1 ({chunk_size - 1}), "
            f"not {chunk_overlap}"
        )
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(
        chunk_size=chunk_size, chunk_overlap=chunk_overlap, strip_whitespace=True
    )
    return lambda text: [c for c in splitter.split_text(text) if c.strip()]


def to_source_chunks(doc: SourceDocument, split: Callable[[str], list[str]]) -> SourceChunks:
    """Chunk one source document, carrying its title and metadata onto every chunk."""
    metadata = dict(doc.metadata)
    if doc.doc_id is not None:
        metadata["doc_id"] = doc.doc_id
    return SourceChunks(source=doc.source, texts=split(doc.text), title=doc.title,
                        metadata=metadata)


def ingest_documents(
    store: KnowledgeStore,
    documents: Iterable[SourceDocument],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    batch_chunks: int = DEFAULT_BATCH_CHUNKS,
    on_batch: Callable[[IngestSummary], None] | None = None,
    on_refused: Callable[[str], None] | None = None,
) -> IngestSummary:
    """Chunk, embed and upsert `documents` into `store`, one transaction per batch of sources.

    The loaders refuse what PostgreSQL would; should the database still refuse a value in a
    batch, the batch is split until the one refused source is found, so its good neighbours are
    written all the same.

    Args:
        store: The target collection.
        documents: Source documents, read lazily.
        chunk_size: Maximum characters per chunk.
        chunk_overlap: Characters shared by consecutive chunks.
        batch_chunks: Chunks per batch (a source is never split across batches).
        on_batch: Called with the running summary after each committed batch.
        on_refused: Called with the message of a source the database refused, which is then
            skipped; when None, that source raises `InputError` (earlier sources stay written).
    """
    split = make_splitter(chunk_size, chunk_overlap)
    summary = IngestSummary(collection=store.collection)
    write_chunks(store, (to_source_chunks(doc, split) for doc in documents), summary,
                 batch_chunks=batch_chunks, on_batch=on_batch, on_refused=on_refused)
    return summary


def write_chunks(
    store: KnowledgeStore,
    items: Iterable[SourceChunks],
    summary: IngestSummary,
    *,
    batch_chunks: int = DEFAULT_BATCH_CHUNKS,
    on_batch: Callable[[IngestSummary], None] | None = None,
    on_refused: Callable[[str], None] | None = None,
) -> None:
    """Upsert chunked sources into `store` in batches, counting them into `summary`.

    The write half of `ingest_documents`, shared with the Ray engine (which embeds ahead of it):
    one transaction per batch, a source never split across batches, `summary.seconds` carried on
    from what it already holds. See `ingest_documents` for the arguments.
    """
    started = time.perf_counter() - summary.seconds
    batch: list[SourceChunks] = []
    pending = 0

    def flush() -> None:
        nonlocal batch, pending
        if batch:
            for report in _upsert_isolating(store, batch, on_refused):
                summary.add(report)
            batch, pending = [], 0
            summary.seconds = time.perf_counter() - started
            if on_batch:
                on_batch(summary)

    for item in items:
        summary.documents += 1
        summary.chunks += len(item.texts)
        batch.append(item)
        pending += len(item.texts)
        if pending >= batch_chunks:
            flush()
    flush()
    summary.seconds = time.perf_counter() - started


def _upsert_isolating(store: KnowledgeStore, batch: list[SourceChunks],
                      on_refused: Callable[[str], None] | None) -> list[UpsertReport]:
    """Upsert `batch`; if the database refuses a value, bisect to the refused source."""
    import psycopg

    try:
        return [store.upsert_sources(batch)]
    except (psycopg.DataError, psycopg.errors.ProgramLimitExceeded, UnicodeEncodeError) as exc:
        if len(batch) > 1:
            half = len(batch) // 2
            return (_upsert_isolating(store, batch[:half], on_refused)
                    + _upsert_isolating(store, batch[half:], on_refused))
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        message = f"{batch[0].source}: the database refused this source ({reason})"
        if on_refused is None:
            raise InputError(message) from None
        on_refused(message)
        return []


def ingest_paths(
    store: KnowledgeStore,
    paths: Sequence[str | os.PathLike[str]],
    *,
    fmt: Format = "auto",
    skip_bad: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    batch_chunks: int = DEFAULT_BATCH_CHUNKS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    on_batch: Callable[[IngestSummary], None] | None = None,
) -> IngestSummary:
    """Ingest files and folders (see `ragtune.tools.loaders` for formats) into `store`.

    With `skip_bad`, unusable files and JSONL lines are skipped and listed in the summary's
    `skipped`; without it the first one raises `InputError` naming the file and line (batches
    already committed stay, whole sources only, and a re-run completes the rest without
    duplicates).
    """
    skipped: list[str] = []
    make_splitter(chunk_size, chunk_overlap)  # reject bad settings before reading anything
    documents = iter_documents(paths, fmt, skip_bad=skip_bad, on_skip=skipped.append,
                               max_file_bytes=max_file_bytes)
    summary = ingest_documents(store, documents, chunk_size=chunk_size,
                               chunk_overlap=chunk_overlap, batch_chunks=batch_chunks,
                               on_batch=on_batch,
                               on_refused=skipped.append if skip_bad else None)
    summary.skipped = skipped
    return summary
