"""A user's own question file for `ragtune bench qa --questions FILE.jsonl --collection NAME`.

One JSON object per line:

    {"id": "q1", "question": "...", "answer": "...", "answer_aliases": ["..."],
     "gold_titles": ["..."], "kind": "..."}

`id`, `question` and `answer` are required; `answer_aliases` (other accepted answers),
`gold_titles` (titles of the paragraphs that hold the answer, for retrieval recall) and `kind` (a
label to break results down by) are optional. Blank lines are skipped. The whole file is checked
before anything runs: every bad line (not JSON, not an object, a missing or ill-typed field, an
unknown key, a duplicate id, text PostgreSQL would refuse) is reported with the file and line, and
the run is refused (exit 3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ragtune.errors import InputError
from ragtune.evaluation.datasets import QAItem

REQUIRED = ("id", "question", "answer")
OPTIONAL = ("answer_aliases", "gold_titles", "kind")
MAX_REPORTED = 20
"""Bad lines listed in the error; the rest are counted."""


def load_question_file(path: str | Path, *, max_question_chars: int | None = None) -> list[QAItem]:
    """Return the questions of a question file, in file order.

    Args:
        path: The JSONL file.
        max_question_chars: The longest question accepted (default: the agent's own limit).

    Raises:
        InputError: The file cannot be read (a FIFO, a folder, no permission), is not UTF-8,
            holds no questions, or has bad lines (all of them are listed, by line).
    """
    from ragtune.agents.context import MAX_QUESTION_CHARS
    from ragtune.tools.loaders.files import open_binary

    limit = max_question_chars or MAX_QUESTION_CHARS
    with open_binary(Path(path)) as handle:  # refuses FIFOs and devices, never hangs on them
        raw = handle.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not UTF-8 text ({exc.reason})") from None
    items: list[QAItem] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = _parse(line, limit)
        except ValueError as exc:
            problems.append(f"{path}:{number}: {exc}")
            continue
        if item.id in first_line:
            problems.append(f"{path}:{number}: duplicate id {item.id!r} (first on line "
                            f"{first_line[item.id]})")
            continue
        first_line[item.id] = number
        items.append(item)
    if problems:
        shown = problems[:MAX_REPORTED]
        more = len(problems) - len(shown)
        raise InputError(f"{path}: {len(problems)} bad line{'s' if len(problems) > 1 else ''}, "
                         "nothing was run:\n  " + "\n  ".join(shown)
                         + (f"\n  ... and {more} more" if more else ""))
    if not items:
        raise InputError(f"{path}: no questions")
    return items


def _parse(line: str, limit: int) -> QAItem:
    """One line as a `QAItem`; `ValueError` says what is wrong with it."""
    from ragtune.tools.validation import json_problem

    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise ValueError("invalid JSON (nested too deeply)") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise ValueError(f"invalid JSON ({str(exc).split(';')[0]})") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object with {', '.join(REQUIRED)}, not "
                         f"{type(record).__name__}")
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        raise ValueError(f"missing {', '.join(repr(k) for k in missing)}")
    unknown = sorted(set(record) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (allowed: "
                         f"{', '.join((*REQUIRED, *OPTIONAL))})")
    problem = json_problem(record, where="line")
    if problem is not None:
        raise ValueError(problem)
    identifier = record["id"]
    if isinstance(identifier, bool) or not isinstance(identifier, str | int):
        raise ValueError(f"'id' must be a string or an integer, not {_kind(identifier)}")
    if not str(identifier).strip():
        raise ValueError("'id' is empty")
    question = _text(record, "question")
    if len(question) > limit:
        raise ValueError(f"'question' has {len(question)} characters; the limit is {limit}")
    answer = _text(record, "answer")
    aliases = _texts(record, "answer_aliases")
    titles = _texts(record, "gold_titles")
    kind = record.get("kind", "")
    if not isinstance(kind, str):
        raise ValueError(f"'kind' must be a string, not {_kind(kind)}")
    return QAItem(str(identifier), question, answer, tuple(aliases), tuple(titles), kind)


def _text(record: dict[str, Any], key: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, not {_kind(value)}")
    if not value.strip():
        raise ValueError(f"{key!r} is empty")
    return value.strip()


def _texts(record: dict[str, Any], key: str) -> list[str]:
    value = record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{key!r} must be a list of non-empty strings")
    return [v.strip() for v in value]


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
