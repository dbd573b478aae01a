"""Turn input paths into `SourceDocument`s for the ingestion pipeline.

This package owns reading user input: walking folders, telling formats apart, parsing plain text,
Markdown, PDF, HTML, JSONL records and the HotpotQA and MuSiQue dataset files, and rejecting bad
input with an `InputError` that names the file (and line). It does not chunk, embed or store.

Sources and metadata:
    * ``text`` files (.txt .md .markdown .pdf .html .htm): ``source`` is the resolved absolute
      path; ``metadata`` holds ``source``, ``format`` (``"text"``), ``file_name``, ``file_type``
      (``txt``, ``markdown``, ``html`` or ``pdf``) and, for a PDF, ``page_count`` and the PDF's
      info fields (``producer``, ``creator``, ``title``, ...).
    * ``jsonl`` records ``{"id"?, "title"?, "text", "metadata"?}``: ``source`` is ``jsonl:<id>``,
      else ``<path>#L<line>`` (``<path>#item<n>`` in a JSON list of records); ``metadata`` is the
      record's own, plus ``source``, ``format``, ``file_name`` and ``record`` (``L<line>``).
    * ``hotpotqa`` paragraphs: ``source`` is ``hotpotqa:<title>``, ``metadata`` is
      ``{"title", "dataset": "hotpotqa"}``; deduplicated by title within one call, the first text
      winning (a title seen with another text is counted in `LoadStats.conflicts`).
    * ``musique`` paragraphs: ``source`` is ``musique:<title>:<sha1(text)[:12]>``, ``metadata``
      is ``{"title", "dataset": "musique"}``; deduplicated by (title, text).

Laziness: documents are yielded as files are read. A text, PDF or HTML file is validated whole
before its document is yielded; JSONL and dataset files are streamed record by record, so an error
at line N can surface after the documents of earlier lines were yielded. The pipeline commits per
batch and re-ingesting a source replaces its chunks, so fixing the file and re-running is safe.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import get_args

from ragtune.errors import InputError
from ragtune.tools.validation import json_problem, text_problem

from .detect import detect_format
from .document import Format, LoadStats, SourceDocument
from .files import KNOWN_EXTENSIONS, check_file, describe_mode, describe_os_error, walk_folder
from .records import (
    JsonRecord,
    hotpotqa_paragraphs,
    iter_records,
    jsonl_problem,
    musique_paragraphs,
)
from .text_files import read_text_file

__all__ = [
    "KNOWN_EXTENSIONS",
    "Format",
    "LoadStats",
    "SourceDocument",
    "detect_format",
    "iter_documents",
]

logger = logging.getLogger(__name__)


def iter_documents(
    paths: Sequence[str | os.PathLike[str]],
    fmt: Format = "auto",
    *,
    skip_bad: bool = False,
    on_skip: Callable[[str], None] | None = None,
    max_file_bytes: int = 20 * 1024 * 1024,
    stats: LoadStats | None = None,
) -> Iterator[SourceDocument]:
    """Yield the documents found in files and folders.

    Folders are walked recursively in sorted order, skipping hidden entries and files whose
    extension is not in `KNOWN_EXTENSIONS`; a file named twice is read once. Every path is checked
    before the first document is yielded.

    Args:
        paths: Files and folders to read.
        fmt: The format of every file, or ``"auto"`` to detect it per file (see `detect_format`).
            With ``"text"``, a file of an unknown extension is read as plain text.
        skip_bad: Skip a missing path or a bad file, line or item instead of raising; a folder
            with no ingestible files is still an error.
        on_skip: Called with the message of each skipped input; by default it is logged.
        max_file_bytes: Refuse any file (JSONL included) larger than this many bytes.
        stats: Filled in with counts while iterating, when given.

    Yields:
        One document per file, JSONL record, or distinct dataset paragraph.

    Raises:
        InputError: On the first bad input (unless ``skip_bad``), naming the file and line.
    """
    if fmt not in get_args(Format):
        raise InputError(f"unknown format {fmt!r}; expected one of: {', '.join(get_args(Format))}")
    reader = _Reader(skip_bad, on_skip, max_file_bytes, stats or LoadStats())
    for path in reader.expand(paths):
        yield from reader.read_file(path, fmt)


class _Reader:
    """The state of one `iter_documents` call: its options, counters and deduplication keys."""

    def __init__(
        self,
        skip_bad: bool,
        on_skip: Callable[[str], None] | None,
        max_file_bytes: int,
        stats: LoadStats,
    ) -> None:
        self.skip_bad = skip_bad
        self.on_skip = on_skip
        self.max_file_bytes = max_file_bytes
        self.stats = stats
        self.hotpotqa_titles: dict[str, str] = {}
        self.musique_keys: set[tuple[str, str]] = set()
        self.jsonl_ids: dict[str, str] = {}

    def reject(self, error: InputError) -> None:
        """Raise ``error``, or count and report it when skipping bad input."""
        if not self.skip_bad:
            raise error
        self.stats.skipped += 1
        if self.on_skip is not None:
            self.on_skip(str(error))
        else:
            logger.warning("skipped: %s", error)

    def expand(self, paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
        """Resolve paths into the files to read, in order and without repeats."""
        files: dict[Path, None] = {}
        for raw in paths:
            path = Path(raw).expanduser()
            try:
                mode = path.stat().st_mode
            except FileNotFoundError:
                self.reject(InputError(f"{path}: no such file or folder"))
                continue
            except OSError as exc:
                self.reject(InputError(f"cannot read {path}: {describe_os_error(exc)}"))
                continue
            if stat.S_ISDIR(mode):
                found = dict.fromkeys(walk_folder(path))
                if not found:
                    known = " ".join(sorted(KNOWN_EXTENSIONS))
                    raise InputError(f"{path}: folder has no ingestible files ({known})")
                files.update(found)
            elif stat.S_ISREG(mode):
                files[path.resolve()] = None
            else:
                self.reject(InputError(f"cannot read {path}: not a regular file or folder "
                                       f"({describe_mode(mode)})"))
        return list(files)

    def read_file(self, path: Path, fmt: Format) -> Iterator[SourceDocument]:
        """Yield the documents of one file, rejecting the rest of it on a file-level error."""
        self.stats.files += 1
        try:
            check_file(path, self.max_file_bytes)
            kind = detect_format(path) if fmt == "auto" else fmt
            documents: Iterator[SourceDocument]
            if kind == "text":
                documents = iter([_checked(read_text_file(path, self.max_file_bytes), str(path))])
            else:
                documents = self._read_records(path, kind)
            for document in documents:
                self.stats.documents += 1
                yield document
        except InputError as exc:
            self.reject(exc)

    def _read_records(self, path: Path, kind: Format) -> Iterator[SourceDocument]:
        """Yield the documents of a JSONL, HotpotQA or MuSiQue file, record by record."""
        for record in iter_records(path, self.max_file_bytes):
            try:
                if record.error is not None:
                    raise InputError(f"{record.where}: {record.error}")
                if kind == "jsonl":
                    documents = [self._jsonl_document(path, record)]
                elif kind == "hotpotqa":
                    documents = self._hotpotqa_documents(record)
                else:
                    documents = self._musique_documents(record)
                # Checked whole before any is yielded: one bad paragraph rejects its record.
                yield from [_checked(document, record.where) for document in documents]
            except InputError as exc:
                self.reject(exc)

    def _jsonl_document(self, path: Path, record: JsonRecord) -> SourceDocument:
        problem = jsonl_problem(record.value)
        if problem is not None:
            raise InputError(f"{record.where}: {problem}")
        obj = record.value
        doc_id = None if obj.get("id") is None else str(obj["id"])
        if doc_id is not None and doc_id in self.jsonl_ids:
            first = self.jsonl_ids[doc_id]
            raise InputError(f"{record.where}: duplicate id {doc_id!r} (first at {first})")
        source = f"jsonl:{doc_id}" if doc_id is not None else f"{path}#{record.anchor}"
        metadata = {
            **(obj.get("metadata") or {}),
            "source": source,
            "format": "jsonl",
            "file_name": path.name,
            "record": record.anchor,
        }
        document = _checked(SourceDocument(source, obj["text"], obj.get("title"), doc_id,
                                           metadata), record.where)
        if doc_id is not None:
            # Registered only once valid: a rejected record does not claim its id.
            self.jsonl_ids[doc_id] = record.where
        return document

    def _hotpotqa_documents(self, record: JsonRecord) -> list[SourceDocument]:
        documents = []
        for title, text in hotpotqa_paragraphs(record):
            digest = _sha1(text)
            known = self.hotpotqa_titles.get(title)
            if known is None:
                self.hotpotqa_titles[title] = digest
                metadata = {"title": title, "dataset": "hotpotqa"}
                documents.append(SourceDocument(f"hotpotqa:{title}", text, title, None, metadata))
            elif known == digest:
                self.stats.duplicates += 1
            else:
                self.stats.conflicts += 1
                logger.warning(
                    "%s: HotpotQA title %r seen again with another text; kept the first",
                    record.where,
                    title,
                )
        return documents

    def _musique_documents(self, record: JsonRecord) -> list[SourceDocument]:
        documents = []
        for title, text in musique_paragraphs(record):
            digest = _sha1(text)
            if (title, digest) in self.musique_keys:
                self.stats.duplicates += 1
                continue
            self.musique_keys.add((title, digest))
            metadata = {"title": title, "dataset": "musique"}
            source = f"musique:{title}:{digest[:12]}"
            documents.append(SourceDocument(source, text, title, None, metadata))
        return documents


def _checked(document: SourceDocument, where: str) -> SourceDocument:
    """Return `document`, or raise `InputError` if the database would refuse any part of it.

    A value PostgreSQL refuses (a NUL character, a lone surrogate, NaN, nesting too deep) would
    fail the whole batch it is written in, so it is rejected here, alone, naming where it is.
    """
    # The source is checked last: it is built from the id, the title or the file's path.
    fields = {'"text"': document.text, '"title"': document.title, '"id"': document.doc_id,
              "the file path": document.source}
    for name, value in fields.items():
        problem = text_problem(value) if value is not None else None
        if problem is not None:
            raise InputError(f"{where}: {name} {problem}")
    problem = json_problem(document.metadata, where="metadata")
    if problem is not None:
        raise InputError(f"{where}: {problem}")
    return document


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()
