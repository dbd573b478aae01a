"""What PostgreSQL refuses, checked before it gets there: text, JSON values and result counts.

PostgreSQL `text` cannot hold a NUL character, and a lone UTF-16 surrogate (``"\\ud800"`` in
JSON) cannot be encoded as UTF-8 at all; `jsonb` refuses NaN and Infinity, and nesting deep
enough exhausts the parser's stack (and Python's recursion). One such value in a batch makes the
database refuse the whole batch, so loaders, filters and queries call these checks first and
report the one bad value, naming where it is.
"""

from __future__ import annotations

import math
from typing import Any

MAX_JSON_DEPTH = 64
"""The deepest nesting of objects and lists accepted in metadata and filters."""
MAX_K = 10_000
"""The most results one search may ask for."""


def text_problem(text: str) -> str | None:
    """Say why PostgreSQL would refuse `text` as a text value, or return None when it is fine.

    Returns:
        A phrase to follow a subject ("contains a NUL character at position 3"), or None.
    """
    nul = text.find("\0")
    if nul >= 0:
        return f"contains a NUL character at position {nul}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"contains a lone surrogate U+{ord(text[exc.start]):04X} at position {exc.start} "
                "(not valid Unicode text)")
    return None


def json_problem(value: Any, *, where: str = "value",
                 max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Say why PostgreSQL would refuse `value` as `jsonb`, or return None when it is fine.

    Walks the value without recursion, so a value nested far too deep is reported, not a crash.

    Args:
        value: A parsed JSON value (dicts, lists, strings, numbers, booleans, None).
        where: The name of `value` in the message, e.g. ``"metadata"``.
        max_depth: The deepest nesting of objects and lists allowed.

    Returns:
        A message naming the path of the first bad part (``metadata["a"][2]: NaN ...``), or None.
    """
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= max_depth:
                return f"{path}: nested deeper than {max_depth} levels"
            if isinstance(item, list):
                stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
                continue
            for key, child in item.items():
                if not isinstance(key, str):
                    return f"{path}: key {key!r} is not a string"
                problem = text_problem(key)
                if problem:
                    return f"{path}: key {key!r} {problem}"
                stack.append((child, f"{path}[{key!r}]", depth + 1))
        elif isinstance(item, str):
            problem = text_problem(item)
            if problem:
                return f"{path}: string {problem}"
        elif isinstance(item, float) and not math.isfinite(item):
            name = "NaN" if math.isnan(item) else ("-Infinity" if item < 0 else "Infinity")
            return f"{path}: {name} is not a JSON number (JSON and PostgreSQL refuse it)"
        elif not isinstance(item, bool | int | float | type(None)):
            return f"{path}: {type(item).__name__} is not a JSON value"
    return None


def k_problem(k: Any, name: str = "k") -> str | None:
    """Say why `k` is not a usable number of results, or return None when it is."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        # repr of a huge int is refused by Python itself (over 4300 digits).
        shown = repr(k) if not isinstance(k, int) or abs(k) < 10**30 else "a 30+ digit number"
        return f"{name} must be an integer from 1 to {MAX_K:,}, not {shown}"
    return None
