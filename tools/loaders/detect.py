"""Format detection: by extension, then by sniffing the first value of a JSON or JSONL file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ragtune.errors import InputError

from .document import Format
from .files import (
    JSON_EXTENSIONS,
    KNOWN_EXTENSIONS,
    SNIFF_BYTES,
    TEXT_EXTENSIONS,
    open_binary,
)
from .records import iter_records, json_error


def detect_format(path: Path) -> Format:
    """Tell the format of one file from its extension, sniffing JSON and JSONL files.

    A JSON list is classified by its first item and a JSONL file by its first record: an object
    with ``context`` is HotpotQA, with ``paragraphs`` MuSiQue, with ``text`` a JSONL record.

    Args:
        path: The file.

    Returns:
        ``"text"``, ``"jsonl"``, ``"hotpotqa"`` or ``"musique"``.

    Raises:
        InputError: If the extension is unknown or a JSON file has none of the known shapes.
    """
    suffix = path.suffix.lower()
    if suffix in TEXT_EXTENSIONS:
        return "text"
    if suffix not in JSON_EXTENSIONS:
        known = " ".join(sorted(KNOWN_EXTENSIONS))
        raise InputError(f"{path}: unsupported file type {suffix or '(none)'!r}; known: {known}")
    try:
        first = first_json_value(path)
    except InputError:
        # A JSONL file is told by its first readable line, so that an unreadable first line is
        # rejected alone (skippable, like any other line) rather than with the whole file.
        first = _first_readable_record(path)
        if first is None:
            raise
    if isinstance(first, dict):
        if "context" in first:
            return "hotpotqa"
        if "paragraphs" in first:
            return "musique"
        if "text" in first:
            return "jsonl"
    raise InputError(
        f'{path}: cannot tell the format: expected JSONL records with "text", or a list of '
        'HotpotQA ("context") or MuSiQue ("paragraphs") questions; pass the format explicitly'
    )


def first_json_value(path: Path) -> Any:
    """Return the first item of a JSON list file, or the first value of a JSONL file.

    Reads the file in growing chunks until the value parses, so a large file is not read whole
    unless its first value is malformed.

    Raises:
        InputError: If the file is blank, an empty list, or does not start with valid JSON.
    """
    chunk = SNIFF_BYTES * 8
    with open_binary(path) as handle:
        data = handle.read(chunk)
        at_end = len(data) < chunk
        while True:
            # A multi-byte character cut at the chunk's end is replaced here and whole next time.
            text = data.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
            if not text:
                raise InputError(f"{path}: file is empty (only whitespace)")
            start = 0
            if text.startswith("["):
                start = len(text) - len(text[1:].lstrip())
                if text.startswith("]", start):
                    raise InputError(f"{path}: file holds an empty JSON list")
            try:
                return json.JSONDecoder().raw_decode(text, start)[0]
            except json.JSONDecodeError as exc:
                if at_end:
                    raise InputError(f"{path}: malformed JSON: {exc}") from None
            except (ValueError, RecursionError) as exc:
                raise InputError(f"{path}: {json_error(exc)}") from None
            more = handle.read(chunk)
            data += more
            at_end = len(more) < chunk
            chunk *= 2


def _first_readable_record(path: Path, max_records: int = 100) -> Any:
    """Return the first parseable value among a JSONL file's first records, else None."""
    try:
        for n, record in enumerate(iter_records(path, path.stat().st_size), 1):
            if record.error is None:
                return record.value
            if n >= max_records:
                break
    except (InputError, OSError):
        pass  # a JSON list, or unreadable: the caller reports the first error
    return None
