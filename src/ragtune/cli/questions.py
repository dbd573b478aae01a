"""Reading `{"id", "question"}` JSONL files, the batch input of `search` and `ask`."""

from __future__ import annotations

import json
from pathlib import Path

from ragtune.errors import InputError


def read_questions(path: str, *, allow_blank: bool = False) -> list[tuple[str, str]]:
    """Return `(id, question)` pairs from a JSONL file; a line's number is its id when it has none.

    A line that is not a `{"id", "question"}` object is an error naming the file and line, before
    any question runs. A question the database or the model cannot take (a NUL character, a lone
    surrogate) is returned as is: the batch reports it on its own output line and goes on. With
    `allow_blank`, so is a blank question.

    Raises:
        InputError: The file cannot be read (``cannot read FILE: permission denied``, ``not a
            regular file (a FIFO)``, ...), is not UTF-8, holds no questions, or has a bad line.
    """
    from ragtune.tools.loaders.files import open_binary

    with open_binary(Path(path)) as handle:
        raw = handle.read()
    try:
        lines = raw.decode("utf-8").splitlines()
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
        except RecursionError:
            raise InputError(f"{path}:{number}: invalid JSON (nested too deeply)") from None
        except ValueError as exc:  # an integer of more than 4300 digits
            raise InputError(f"{path}:{number}: invalid JSON ({str(exc).split(';')[0]})") from None
        question = item.get("question") if isinstance(item, dict) else None
        if not isinstance(question, str) or not (allow_blank or question.strip()):
            raise InputError(f'{path}:{number}: expected {{"id", "question"}} with a non-empty '
                             "question")
        out.append((str(item.get("id", number)), question))
    if not out:
        raise InputError(f"{path}: no questions")
    return out
