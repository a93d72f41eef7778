"""A flow's report (engine/crm/reports.py, the JSON of ``GET /v1/flows/{flow}/report``) shaped
for the Reports page: the headline rates, each NPS result's 0-10 bars, the drop-off as a funnel in
the flow's node order, each experiment's arms against the holdout as intervals, and the report
flattened to rows for its CSV download. Pure functions of the report (and the flow's nodes)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from engine.console.charts import Bar, Interval, number, percent
from engine.flows.model import Flow, Node

#: NPS categories of a 0-10 score (the usual cut: 9-10, 7-8, 0-6).
NPS_TONE = ["detractor"] * 7 + ["passive"] * 2 + ["promoter"] * 2


@dataclass(frozen=True)
class Rate:
    name: str
    value: str
    detail: str


def rates(report: dict[str, Any]) -> list[Rate]:
    """The headline numbers, as text, each with what it is out of."""
    runs, msgs = report["runs"], report["messages"]
    known = sum(msgs.get(s, 0) for s in ("delivered", "failed", "expired", "rejected"))
    completion = runs["completed"] / runs["started"] if runs["started"] else None
    reply = report["median_time_to_reply_s"]
    return [
        Rate("Runs started", str(runs["started"]), f"{runs['in_progress']} still in progress"),
        Rate("Completion rate", percent(completion), f"{runs['completed']} of {runs['started']} runs"),
        Rate("Response rate", percent(report["response_rate"]), "runs with at least one answer"),
        Rate("Opt-out rate", percent(report["opt_out_rate"]), "runs in which the customer opted out"),
        Rate("Delivery rate", percent(msgs["delivery_rate"]),
             f"{msgs.get('delivered', 0)} of {known} messages with a known fate"),
        Rate("Median time to reply", "—" if reply is None else f"{number(reply, 1)} s",
             "from the question to the first answer"),
    ]  # fmt: skip


def nps_bars(result: dict[str, Any]) -> list[Bar]:
    """Eleven bars, 0 to 10, toned by the category each score falls in."""
    spread = result.get("distribution") or [0] * 11
    return [Bar(str(score), n, NPS_TONE[score]) for score, n in enumerate(spread)]


def node_order(flow: Flow | None) -> list[str]:
    """The flow's nodes from its start, breadth first along every way out of a node, then any
    the walk did not reach, in the file's order (so a funnel reads the way the flow goes)."""
    if flow is None:
        return []
    seen: list[str] = []
    todo = [flow.start]
    while todo:
        name = todo.pop(0)
        if name in seen or name not in flow.nodes:
            continue
        seen.append(name)
        todo += [t for t in _targets(flow.nodes[name]) if t not in seen]
    return seen + [n for n in flow.nodes if n not in seen]


def _targets(node: Node) -> Iterator[str]:
    yield from (c.goto for c in node.cases)
    for t in (node.default, node.goto, node.timeout_goto, node.reprompt and node.reprompt.after):
        if t:
            yield t
    if node.call:
        yield from (t for t in (node.call.success, node.call.failure) if t)


def funnel_steps(report: dict[str, Any], flow: Flow | None) -> list[tuple[str, int]]:
    """Runs started, then (when some are) those that ended, then after each node where runs
    were lost (in the flow's order) those still going; the last step is the runs completed
    (what is left after the last loss, unless some runs ended without a node to blame)."""
    runs = report["runs"]
    steps = [("started", runs["started"])]
    left = runs["started"] - runs["in_progress"]
    if runs["in_progress"]:
        steps.append(("ended", left))
    order = {n: i for i, n in enumerate(node_order(flow))}
    lost = sorted(report["drop_off"], key=lambda d: (order.get(d["node"], len(order)), d["node"]))
    for d in lost:
        left -= d["runs"]
        steps.append((f"past {d['node']}", left))
    steps.append(("completed", runs["completed"]))
    return steps


@dataclass(frozen=True)
class Arm:
    name: str
    assigned: int
    started: int
    converted: int
    conversion_rate: str
    lift: str
    interval: str
    verdict: str


def experiment_arms(experiment: dict[str, Any]) -> tuple[list[Arm], list[Interval]]:
    """Each arm as text (the holdout first) and, for those compared with the holdout, its lift
    and 95% interval to draw: green when it is conclusively better, red when worse."""
    rows, marks = [], []
    for name, a in experiment["arms"].items():
        lift, ci = a.get("lift"), a.get("lift_ci95")
        if name == "holdout":
            verdict = "the baseline"
        elif lift is None:
            verdict = "no holdout to compare with"
        elif a["small_sample"]:
            verdict = "too few conversions to tell"
        elif a["conclusive"]:
            verdict = "better than the holdout" if lift > 0 else "worse than the holdout"
        else:
            verdict = "no clear difference"
        rows.append(Arm(
            name, a["assigned"], a["started"], a["converted"], percent(a["conversion_rate"]),
            "" if lift is None else percent(lift),
            "" if ci is None else f"{percent(ci[0])} to {percent(ci[1])}", verdict,
        ))  # fmt: skip
        if lift is not None and ci is not None:
            tone = ("good" if lift > 0 else "bad") if a["conclusive"] else "muted"
            marks.append(Interval(name, lift, ci[0], ci[1], tone))
    return rows, marks


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """The report as (dotted name, value) rows: ``runs.started``, ``nps.nps_score.distribution.9``,
    ``drop_off.ask_score``, ``experiments.X.arms.Y.lift_ci95.0`` (the report's CSV download)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list) and value and all(isinstance(d, dict) and "node" in d for d in value):
        for d in value:  # drop_off: by node name rather than position
            yield f"{prefix}.{d['node']}", d["runs"]
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from flatten(v, f"{prefix}.{i}")
    else:
        yield prefix, value
