"""Reading JSON records and checking their shapes.

Owns splitting a file into records (JSONL lines, or the items of a JSON list) and validating a
JSONL document record, a HotpotQA question and a MuSiQue question.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.errors import InputError
from ragtune.tools.validation import text_problem

from .files import SNIFF_BYTES, UTF8_BOM, decode_utf8, open_binary

_JSONL_KEYS = frozenset({"id", "title", "text", "metadata"})


@dataclass(frozen=True)
class JsonRecord:
    """One JSONL line or JSON list item, or why it could not be parsed.

    Attributes:
        where: Where it is, for messages: ``<path>:<line>`` or ``<path> item <n>`` (1-based).
        anchor: Its place as a source suffix: ``L<line>`` or ``item<n>``.
        value: The parsed JSON value (None when ``error`` is set).
        error: Why the line could not be parsed, else None.
    """

    where: str
    anchor: str
    value: Any = None
    error: str | None = None


def iter_records(path: Path, max_bytes: int) -> Iterator[JsonRecord]:
    """Yield the items of a JSON list file, or lazily the non-blank lines of a JSONL file.

    A file whose first non-blank byte is ``[`` is read whole (it is at most ``max_bytes``) as one
    JSON list; anything else is read line by line, so a large JSONL file is never held in memory.

    Raises:
        InputError: If the file is blank, or is a malformed or empty JSON list.
    """
    with open_binary(path) as handle:
        head = handle.read(SNIFF_BYTES).lstrip(UTF8_BOM + b" \t\r\n")
        handle.seek(0)
        if head.startswith(b"["):
            raw = handle.read(max_bytes + 1)
            if len(raw) > max_bytes:
                raise InputError(f"{path}: file is over the limit of {max_bytes:,} bytes")
            try:
                items = json.loads(decode_utf8(path, raw))
            except (ValueError, RecursionError) as exc:
                raise InputError(f"{path}: {json_error(exc)}") from None
            if not items:
                raise InputError(f"{path}: file holds an empty JSON list")
            for n, item in enumerate(items, 1):
                yield JsonRecord(f"{path} item {n}", f"item{n}", item)
            return
        offset, seen = 0, False
        for line_no, line in enumerate(handle, 1):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            seen = True
            where, anchor = f"{path}:{line_no}", f"L{line_no}"
            try:
                text = line.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                bom = len(UTF8_BOM) if line_no == 1 and line.startswith(UTF8_BOM) else 0
                error = f"not valid UTF-8 (byte offset {start + bom + exc.start} in the file)"
                yield JsonRecord(where, anchor, error=error)
                continue
            try:
                value = json.loads(text)
            except (ValueError, RecursionError) as exc:
                yield JsonRecord(where, anchor, error=json_error(exc))
                continue
            yield JsonRecord(where, anchor, value)
        if not seen:
            raise InputError(f"{path}: file is empty (only whitespace)")


def json_error(exc: ValueError | RecursionError) -> str:
    """Say why `json.loads` failed: malformed, nested too deeply, or a number too long."""
    if isinstance(exc, json.JSONDecodeError):
        return f"malformed JSON: {exc}"
    if isinstance(exc, RecursionError):
        return "malformed JSON: nested too deeply to read"
    # Python refuses integers of more than 4300 digits (sys.get_int_max_str_digits).
    return f"unreadable JSON: {str(exc).split(';')[0]}"


def jsonl_problem(obj: Any) -> str | None:
    """Say what is wrong with one JSONL document record, or return None when it is valid.

    A record is ``{"id"?: str | int, "title"?: str, "text": str, "metadata"?: object}`` with a
    non-blank ``text`` (null counts as absent); other keys are refused rather than dropped.
    """
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    unknown = sorted(set(obj) - _JSONL_KEYS)
    if unknown:
        return f'unknown key(s) {", ".join(unknown)}; put extra fields under "metadata"'
    text = obj.get("text")
    if text is None:
        return 'missing "text"'
    if not isinstance(text, str):
        return f'"text" must be a string, got {type(text).__name__}'
    if not text.strip():
        return '"text" is empty'
    doc_id = obj.get("id")
    if doc_id is not None and (isinstance(doc_id, bool) or not isinstance(doc_id, str | int)):
        return f'"id" must be a string or an integer, got {type(doc_id).__name__}'
    if isinstance(doc_id, str) and not doc_id.strip():
        return '"id" is empty'
    if not isinstance(obj.get("title"), str | None):
        return '"title" must be a string'
    if not isinstance(obj.get("metadata"), dict | None):
        return '"metadata" must be a JSON object'
    return None


def hotpotqa_paragraphs(record: JsonRecord) -> list[tuple[str, str]]:
    """Return the ``(title, text)`` paragraphs of one HotpotQA question.

    The text is the paragraph's sentences joined as they are (each already carries its leading
    space), stripped.

    Raises:
        InputError: If the question is not ``{"context": [[title, [sentence, ...]], ...]}`` or a
            paragraph has an empty title or text.
    """
    context = record.value.get("context") if isinstance(record.value, dict) else None
    if not isinstance(context, list) or not context:
        raise InputError(f'{record.where}: not a HotpotQA question (needs a "context" list)')
    paragraphs = []
    for n, entry in enumerate(context, 1):
        title, sentences = entry if isinstance(entry, list) and len(entry) == 2 else (None, None)
        if not (
            isinstance(title, str)
            and isinstance(sentences, list)
            and all(isinstance(sentence, str) for sentence in sentences)
        ):
            raise InputError(f"{record.where}: context[{n}] is not [title, [sentence, ...]]")
        text = "".join(sentences).strip()
        if not title.strip() or not text:
            raise InputError(f"{record.where}: context[{n}] has an empty title or text")
        _check_paragraph(record, f"context[{n}]", title, text)
        paragraphs.append((title, text))
    return paragraphs


def musique_paragraphs(record: JsonRecord) -> list[tuple[str, str]]:
    """Return the ``(title, text)`` paragraphs of one MuSiQue question, texts stripped.

    Raises:
        InputError: If the question is not ``{"paragraphs": [{"title", "paragraph_text"}, ...]}``
            or a paragraph has an empty title or text.
    """
    items = record.value.get("paragraphs") if isinstance(record.value, dict) else None
    if not isinstance(items, list) or not items:
        raise InputError(f'{record.where}: not a MuSiQue question (needs a "paragraphs" list)')
    paragraphs = []
    for n, item in enumerate(items, 1):
        title = item.get("title") if isinstance(item, dict) else None
        text = item.get("paragraph_text") if isinstance(item, dict) else None
        if not isinstance(title, str) or not isinstance(text, str):
            raise InputError(
                f'{record.where}: paragraphs[{n}] needs string "title" and "paragraph_text"'
            )
        if not title.strip() or not text.strip():
            raise InputError(f"{record.where}: paragraphs[{n}] has an empty title or text")
        _check_paragraph(record, f"paragraphs[{n}]", title, text)
        paragraphs.append((title, text.strip()))
    return paragraphs


def _check_paragraph(record: JsonRecord, where: str, title: str, text: str) -> None:
    """Refuse a paragraph the database could not store, before it is deduplicated."""
    for name, value in (("title", title), ("text", text)):
        problem = text_problem(value)
        if problem is not None:
            raise InputError(f"{record.where}: {where} {name} {problem}")
