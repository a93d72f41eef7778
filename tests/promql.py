"""Reading PromQL for the tests of the shipped dashboard and alert rules: which metrics and
labels an expression asks for, and whether a scrape of Parley exports them. Not a parser: enough
of the grammar for the expressions we ship (selectors with matchers, functions, aggregations
with ``by``/``without``, ``on``/``ignoring``, ranges, subqueries, offsets, Grafana variables),
itself tested in tests/test_alerts.py."""

from __future__ import annotations

import re
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

#: Labels Prometheus adds to every series it scrapes (the target's), and the series it makes
#: itself per target: an expression may use these although /metrics does not show them.
TARGET_LABELS = frozenset({"job", "instance"})
SYNTHETIC = {"up": TARGET_LABELS}
#: Labels of the per-process figures in multiprocess mode (added by prometheus_client).
PROCESS_LABELS = frozenset({"pid"})


@dataclass
class Selector:
    metric: str
    matchers: list[tuple[str, str, str]]  # (label, op, value)


KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
     "offset", "inf", "nan"}
)  # fmt: skip
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"(?<![\w.$])([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?\s*(\()?")
MATCHER = re.compile(r'\s*(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')


def promql(expr: str) -> tuple[list[Selector], set[str]]:
    """The series selectors of a PromQL expression and the labels it groups or matches on."""
    grouping = {lab.strip() for m in GROUPING.finditer(expr) for lab in m.group(1).split(",") if lab.strip()}
    rest = GROUPING.sub(" ", expr)
    rest = re.sub(r"\[[^\]]*\]", " ", rest)  # ranges and subqueries: [5m], [1h:1m], [$__rate_interval]
    found = []
    for m in SELECTOR.finditer(rest):
        name, braces, call = m.groups()
        if call or name in KEYWORDS:
            continue  # a function or an aggregation (sum(...), rate(...)), or a keyword
        body = (braces or "{}")[1:-1]
        matchers = [(lab, op, value) for lab, op, value in MATCHER.findall(body)]
        assert MATCHER.sub("", body).strip() == "", f"cannot read the matchers {braces!r} in {expr!r}"
        found.append(Selector(name, matchers))
    assert found, f"no metric in {expr!r}"
    return found, grouping


def exported(text: str) -> dict[str, dict[str, set[str]] | None]:
    """Per series name in a scrape: each label's values seen; None for the series of a family
    without any yet (a metric never used: its name is known, its labels are not)."""
    out: dict[str, dict[str, set[str]] | None] = {}
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
                "gauge": ("",), "info": ("_info",)}  # fmt: skip
    for family in text_string_to_metric_families(text):
        for suffix in suffixes.get(family.type, ("",)):
            out.setdefault(family.name + suffix, None)
        for s in family.samples:
            labels = out[s.name] = out.get(s.name) or {}
            for k, v in s.labels.items():
                labels.setdefault(k, set()).add(v)
    return out


def check_expr(expr: str, have: dict[str, dict[str, set[str]] | None], where: str) -> list[str]:
    """What is wrong with one expression against what a scrape exported (empty: nothing)."""
    problems = []
    selectors, grouping = promql(expr)
    known: set[str] = set(TARGET_LABELS)
    for sel in selectors:
        if sel.metric in SYNTHETIC:
            labels: dict[str, set[str]] = {k: set() for k in SYNTHETIC[sel.metric]}
        elif sel.metric not in have:
            problems.append(f"{where}: {sel.metric} is not exported")
            continue
        elif (seen := have[sel.metric]) is None:
            problems.append(f"{where}: {sel.metric} had no series after the warm-up: its labels are unknown")
            continue
        else:
            labels = seen
        extra = PROCESS_LABELS if sel.metric.startswith(("process_", "python_")) else frozenset()
        known |= set(labels) | extra
        for lab, op, value in sel.matchers:
            if lab in TARGET_LABELS:
                continue
            if lab not in labels:
                problems.append(f"{where}: {sel.metric} has no label {lab!r} (it has {sorted(labels)})")
            elif op == "=" and "$" not in value and labels[lab] and value not in labels[lab]:
                problems.append(
                    f"{where}: {sel.metric}{{{lab}={value!r}}} never exported ({sorted(labels[lab])})"
                )
    for lab in grouping - known - PROCESS_LABELS:
        problems.append(f"{where}: groups by {lab!r}, a label none of its metrics has")
    return problems
