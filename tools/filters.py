"""Metadata filters: a small MongoDB-like language compiled to parameterised SQL over JSONB.

A filter is a JSON object. Each key is a metadata field (any string) or a logical operator:

    {"year": 2020}                          equality (shorthand for {"year": {"$eq": 2020}})
    {"year": {"$gte": 2000, "$lt": 2010}}   several operators on one field are ANDed
    {"lang": {"$in": ["en", "fr"]}}
    {"$or": [{"dataset": "hotpotqa"}, {"draft": {"$exists": false}}]}

Field operators: `$eq $ne $in $nin $gt $gte $lt $lte $exists`; logical: `$and $or` (lists of
filters). Several keys in one object are ANDed. `$ne` and `$nin` also match documents that lack the
field (as in MongoDB). Order comparisons only match values of the same JSON type as the operand
(numbers with numbers, strings with strings). Every field name and value reaches the database as a
bound parameter; nothing from a filter is ever spliced into SQL text. Values PostgreSQL's
jsonb refuses (NaN, Infinity, NUL characters, lone surrogates) and nesting deeper than
`MAX_JSON_DEPTH` are refused as a `FilterError` before any SQL is built.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from psycopg import sql

from ragtune.errors import FilterError
from ragtune.tools.validation import MAX_JSON_DEPTH, json_problem

FIELD_OPERATORS = frozenset({"$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists"})
LOGICAL_OPERATORS = frozenset({"$and", "$or"})
_ORDER_SQL = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_SCALARS = (str, int, float, bool, type(None))


def compile_filter(
    flt: Mapping[str, Any] | None, column: str = "metadata"
) -> tuple[sql.Composable, list[Any]]:
    """Compile `flt` into a SQL boolean expression over the JSONB `column` and its parameters.

    Returns `(TRUE, [])` for an empty or missing filter.

    Raises:
        FilterError: an unknown operator, or an operand of the wrong shape.
    """
    params: list[Any] = []
    if not flt:
        return sql.SQL("TRUE"), params
    if not isinstance(flt, Mapping):
        raise FilterError(f"A filter must be a JSON object, not {type(flt).__name__}")
    # Checked whole first: the database refuses NaN, Infinity and NUL characters in jsonb, and
    # the bounded depth keeps the recursive compilation below from exhausting the stack.
    problem = json_problem(dict(flt), where="filter", max_depth=MAX_JSON_DEPTH)
    if problem is not None:
        raise FilterError(f"Invalid filter: {problem}")
    expr = _compile_object(flt, sql.Identifier(column), params)
    return expr, params


def parse_filter(text: str) -> dict[str, Any]:
    """Parse a filter given as JSON text (the CLI's `--filter`) and validate it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FilterError(f"--filter is not valid JSON: {exc}") from exc
    except RecursionError:
        raise FilterError(f"--filter is nested too deeply (the limit is {MAX_JSON_DEPTH} "
                          "levels)") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise FilterError(f"--filter is not usable JSON: {str(exc).split(';')[0]}") from None
    if not isinstance(value, dict):
        raise FilterError("--filter must be a JSON object, e.g. '{\"year\": {\"$gte\": 2000}}'")
    compile_filter(value)
    return value


def _compile_object(
    flt: Mapping[str, Any], col: sql.Composable, params: list[Any]
) -> sql.Composable:
    if not flt:
        raise FilterError("Empty filter object inside a filter")
    parts = []
    for key, value in flt.items():
        if not isinstance(key, str):
            raise FilterError(f"Filter keys must be strings, not {key!r}")
        if key in LOGICAL_OPERATORS:
            parts.append(_compile_logical(key, value, col, params))
        elif key.startswith("$"):
            raise FilterError(
                f"Unknown filter operator {key!r} at the top of a filter; "
                f"allowed there: {', '.join(sorted(LOGICAL_OPERATORS))} or a field name"
            )
        else:
            parts.append(_compile_field(key, value, col, params))
    return _join(parts, "AND")


def _compile_logical(
    op: str, value: Any, col: sql.Composable, params: list[Any]
) -> sql.Composable:
    if not isinstance(value, list) or not value:
        raise FilterError(f"{op} takes a non-empty list of filters")
    parts = []
    for item in value:
        if not isinstance(item, Mapping):
            raise FilterError(f"{op} takes a list of filter objects, got {item!r}")
        parts.append(_compile_object(item, col, params))
    return _join(parts, "AND" if op == "$and" else "OR")


def _compile_field(
    field: str, value: Any, col: sql.Composable, params: list[Any]
) -> sql.Composable:
    if isinstance(value, Mapping) and any(str(k).startswith("$") for k in value):
        if not value:
            raise FilterError(f"Empty operator object for field {field!r}")
        parts = []
        for op, operand in value.items():
            if op not in FIELD_OPERATORS:
                raise FilterError(
                    f"Unknown filter operator {op!r} on field {field!r}; "
                    f"allowed: {', '.join(sorted(FIELD_OPERATORS))}"
                )
            parts.append(_compile_operator(field, op, operand, col, params))
        return _join(parts, "AND")
    return _compile_operator(field, "$eq", value, col, params)


def _compile_operator(
    field: str, op: str, operand: Any, col: sql.Composable, params: list[Any]
) -> sql.Composable:
    contains = sql.SQL("{} @> %s::jsonb").format(col)
    if op in ("$eq", "$ne"):
        _check_json(field, op, operand)
        if isinstance(operand, (list, dict)):
            # Containment would let [1, 2] match [1]; arrays and objects compare exactly.
            params.extend([field, json.dumps(operand)])
            equal = sql.SQL("COALESCE(({} -> %s) = %s::jsonb, FALSE)").format(col)
        else:
            # Containment of a scalar is equality, and it can use the GIN index.
            params.append(json.dumps({field: operand}))
            equal = contains
        return equal if op == "$eq" else sql.SQL("NOT ({})").format(equal)
    if op in ("$in", "$nin"):
        if not isinstance(operand, list) or not operand:
            raise FilterError(f"{op} on field {field!r} takes a non-empty list")
        for item in operand:
            _check_json(field, op, item)
        params.extend([field, [json.dumps(item) for item in operand]])
        member = sql.SQL("COALESCE(({} -> %s) = ANY(%s::jsonb[]), FALSE)").format(col)
        return member if op == "$in" else sql.SQL("NOT {}").format(member)
    if op in _ORDER_SQL:
        if isinstance(operand, bool) or not isinstance(operand, (int, float, str)):
            raise FilterError(
                f"{op} on field {field!r} takes a number or a string, got {operand!r}")
        encoded = json.dumps(operand)
        params.extend([field, encoded, field, encoded])
        return sql.SQL(
            "(jsonb_typeof({col} -> %s) = jsonb_typeof(%s::jsonb) AND ({col} -> %s) {op} %s::jsonb)"
        ).format(col=col, op=sql.SQL(_ORDER_SQL[op]))
    # $exists
    if not isinstance(operand, bool):
        raise FilterError(f"$exists on field {field!r} takes true or false, got {operand!r}")
    params.append(field)
    exists = sql.SQL("({} ? %s)").format(col)
    return exists if operand else sql.SQL("NOT {}").format(exists)


def _check_json(field: str, op: str, operand: Any) -> None:
    if isinstance(operand, float) and operand != operand:
        raise FilterError(f"{op} on field {field!r}: NaN cannot be compared")
    if not isinstance(operand, _SCALARS + (list, dict)):
        raise FilterError(
            f"{op} on field {field!r} takes a JSON value, got {type(operand).__name__}")


def _join(parts: list[sql.Composable], word: str) -> sql.Composable:
    if len(parts) == 1:
        return parts[0]
    return sql.SQL("(") + sql.SQL(f" {word} ").join(parts) + sql.SQL(")")
