"""Reading `{"id", "question"}` JSONL files, the batch input of `search` and `ask`."""

from __future__ import annotations

import json
from pathlib import Path

from ragtune.errors import InputError


def read_questions(path: str, *, allow_blank: bool = False) -> list[tuple[str, str]]:
    """Return `(id, question)` pairs from a JSONL file; a line's number is its id when it has none.

    With `allow_blank`, a blank question is returned as is (the caller reports it per line);
    otherwise it is an error naming the file and line, like any malformed line.
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{path}: no such file")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: invalid JSON ({exc.msg})") from exc
        question = item.get("question") if isinstance(item, dict) else None
        if not isinstance(question, str) or not (allow_blank or question.strip()):
            raise InputError(f'{path}:{number}: expected {{"id", "question"}} with a non-empty '
                             "question")
        out.append((str(item.get("id", number)), question))
    if not out:
        raise InputError(f"{path}: no questions")
    return out
