"""The values the loaders produce: `SourceDocument`, the `Format` names and `LoadStats`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Format = Literal["auto", "text", "jsonl", "hotpotqa", "musique"]


@dataclass(frozen=True)
class SourceDocument:
    """One document to ingest.

    Attributes:
        source: Stable key of where the text came from; re-ingesting it replaces its old chunks.
        text: The full text; never empty or whitespace-only.
        title: A human title, when the input has one.
        doc_id: The id the user gave (JSONL ``id``), else None.
        metadata: JSON-serialisable facts about the document, stored with its chunks.
    """

    source: str
    text: str
    title: str | None = None
    doc_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadStats:
    """Counts kept by one `iter_documents` call, for progress reports.

    Attributes:
        files: Files opened.
        documents: Documents yielded.
        skipped: Paths, files, lines or items skipped as bad (only with ``skip_bad``).
        duplicates: Dataset paragraphs dropped as exact repeats of an earlier one.
        conflicts: HotpotQA titles seen again with another text (the first text is kept).
    """

    files: int = 0
    documents: int = 0
    skipped: int = 0
    duplicates: int = 0
    conflicts: int = 0
