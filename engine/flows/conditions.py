"""Conditions on data: route on what Parley knows, not on what the customer said.

    when: {field: contact.tier, equals: gold}
    when: {field: contact.tier, in: [gold, silver]}
    when: {field: results.nps_score, gte: 9}
    when: {field: contact.balance, exists: true}

``field`` is a dotted path into ``contact.*``, ``results.*`` (a result's value), ``params.*`` or
``session.*`` (``flow``, ``started_at``). Comparisons are type-aware: numbers compare as numbers
(a numeric string from a CRM counts as a number), text compares case-insensitively. No eval.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from engine.flows.reply_tests import TestArgError
from engine.flows.text import fold

Condition = Callable[[dict[str, Any]], bool]
ROOTS = frozenset({"contact", "results", "params", "session"})


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return None
    return None


def _norm(v: Any) -> Any:
    n = _num(v)
    if n is not None:
        return n
    return fold(v) if isinstance(v, str) else v


def _compare(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def check(value: Any, ref: Any) -> bool:
        a, b = _num(value), _num(ref)
        return a is not None and b is not None and op(a, b)

    return check


OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "equals": lambda v, ref: v is not None and _norm(v) == _norm(ref),
    "not_equals": lambda v, ref: v is None or _norm(v) != _norm(ref),
    "in": lambda v, ref: v is not None and _norm(v) in {_norm(r) for r in ref},
    "not_in": lambda v, ref: v is None or _norm(v) not in {_norm(r) for r in ref},
    "lt": _compare(operator.lt),
    "lte": _compare(operator.le),
    "gt": _compare(operator.gt),
    "gte": _compare(operator.ge),
    "exists": lambda v, ref: (v is not None and v != "") == bool(ref),
    "contains": lambda v, ref: (
        any(_norm(x) == _norm(ref) for x in v)
        if isinstance(v, list)
        else v is not None and fold(str(ref)) in fold(str(v))
    ),
}


def is_condition(spec: Any) -> bool:
    return isinstance(spec, dict) and "field" in spec


def resolve(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    cur: Any = data
    for part in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def compile_condition(spec: dict[str, Any]) -> Condition:
    """``{field: PATH, OP: VALUE}`` -> a predicate over the turn's data; TestArgError says why not."""
    field = spec.get("field")
    if not isinstance(field, str) or field.split(".")[0] not in ROOTS or "." not in field:
        raise TestArgError(f"field must be a path like contact.tier or results.nps_score, got {field!r}")
    ops = [k for k in spec if k != "field"]
    if len(ops) != 1 or ops[0] not in OPERATORS:
        raise TestArgError(f"a condition needs exactly one of {', '.join(OPERATORS)}; got {ops or 'none'}")
    op, ref = ops[0], spec[ops[0]]
    if op in ("in", "not_in") and not isinstance(ref, list):
        raise TestArgError(f"{op} needs a list, got {ref!r}")
    if op in ("lt", "lte", "gt", "gte") and _num(ref) is None:
        raise TestArgError(f"{op} needs a number, got {ref!r}")
    path = tuple(field.split("."))
    check = OPERATORS[op]
    return lambda data: bool(check(resolve(data, path), ref))
