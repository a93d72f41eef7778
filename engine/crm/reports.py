"""A flow's runs and report, read from the outcome events (``p:fx:T``, one stream per shard,
engine/conversation/outcomes.py).

Every shard's stream is read, shard 0 first, in pages (a script filters each page in Redis, so
only the flow's events are sent and parsed) and folded into one :class:`Run` per run; a report
and a results export are both made from those. A contact's events are all in its shard's
stream, in order, so a run folds the same whatever order the shards are read in; the one
exception is an upgraded database, whose earlier events ``parley migrate`` moved to shard 0's
stream: reading shard 0 first keeps them before the later ones. Reading costs one pass over the
streams: about 4 s for a million events of one flow on the 2-core VM of docs/BENCHMARKS.md, the
API answering other requests between pages. A report covers the runs whose events are still
kept (``engine.outcome_events_max`` per shard).

Definitions (docs/api.md#results-and-reports says the same to a user):
- **completed**: the run ended with one of the flow's own outcomes (an ``end:``), not one of
  Parley's (expired, unanswered, failed, interrupted, flow_changed);
- **response rate**: runs in which the customer answered at least once, over runs started (an
  answer the flow matched to nothing, and reprompted, is an answer; a keyword is not);
- **opt-out rate**: runs during which the customer opted out, over runs started;
- **delivery rate**: the flow's messages delivered, over those whose fate a receipt or a
  failure told (delivered + failed + expired + rejected); ``awaiting_receipt`` are the others
  the provider took; ``total`` counts both, ``blocked`` (by the governance gate) apart. STOP and
  START confirmations and HELP answers sent during a run are not the flow's messages: they are
  counted apart, in ``governance_messages`` (their message events say ``governance: true``);
- **median time to reply**: from the question to the customer's first answer in a run;
- **NPS**: for every result whose categories are promoter/passive/detractor, per run (its last
  value): % promoters - % detractors among the runs that gave one, and ``distribution``: how
  many gave each whole score from 0 to 10 (index = score);
- **drop-off**: runs that ended without completing, by the node they were waiting at;
- **experiments**: per arm (and the holdout) of each experiment started with this flow: contacts
  assigned, runs started, contacts who converted (a CRM conversion attributed to that start),
  the conversion rate, and for each arm against the holdout the lift (difference of the two
  rates) with its 95% confidence interval, Newcombe's hybrid score interval (:func:`newcombe`),
  the relative lift, and two flags: ``small_sample`` when the arm or the holdout has fewer than
  :data:`MIN_EVENTS` conversions or non-conversions (too few to read a difference from, however
  the interval looks) and ``conclusive`` when it does not and the interval excludes 0.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.conversation.outcomes import ENGINE_OUTCOMES
from engine.core.scripts.fx_page import FxPage, FxPageArgs
from engine.core.store import Store

PAGE = 10_000
#: 97.5th percentile of the standard normal: a two-sided 95% interval.
Z95 = 1.959963984540054
#: Conversions and non-conversions each side needs before a lift is read (the usual rule of
#: thumb for a comparison of two proportions: at least 10 of each outcome in each group).
MIN_EVENTS = 10
NPS_CATEGORIES = frozenset({"promoter", "passive", "detractor"})
FINAL = ("delivered", "failed", "expired", "rejected")


@dataclass
class Run:
    contact: str
    run: str
    started_at: int = 0
    ended_at: int | None = None
    outcome: str | None = None
    node: str | None = None
    replies: int = 0
    first_reply_ms: int | None = None
    opted_out: bool = False
    results: dict[str, tuple[Any, str | None]] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.outcome is not None and self.outcome not in ENGINE_OUTCOMES


async def entries(store: Store, shards: int, needle: str = "") -> AsyncIterator[tuple[int, bytes, bytes]]:
    """(shard, entry id, event JSON) of every shard's outcome stream (``shards``: engine.shards),
    shard by shard from 0, each oldest first, for events whose JSON contains ``needle``
    (filtered in Redis a page at a time: only candidates are sent and parsed)."""
    for shard in range(shards):
        start = "-"
        while True:
            call = FxPageArgs(shard, start, PAGE, needle)
            page = FxPage.parse(await store.run("fx_page", call.to_keys(), call.to_argv()))
            for eid, raw in page.entries:
                yield shard, eid, raw
            if not page.next:
                break
            start = page.after()


async def events(store: Store, shards: int, flow: str) -> AsyncIterator[dict[str, Any]]:
    """The flow's outcome events, each shard's oldest first (so each contact's in order)."""
    async for _, _, raw in entries(store, shards, orjson.dumps({"f": flow}).decode()[1:-1]):
        e = orjson.loads(raw)
        if e.get("f") == flow:
            yield e


@dataclass
class Fold:
    runs: dict[str, Run] = field(default_factory=dict)
    messages: Counter[str] = field(default_factory=Counter)
    #: message id -> its last reported status (a message reported sent, then delivered, counts once)
    status: dict[str, str] = field(default_factory=dict)
    #: ids of messages that were STOP/START confirmations or HELP answers, not the flow's own
    governance: set[str] = field(default_factory=set)
    governance_messages: Counter[str] = field(default_factory=Counter)
    #: experiment -> arm -> contacts assigned / runs started / contacts converted, value
    assigned: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    started: Counter[tuple[str, str]] = field(default_factory=Counter)
    converted: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    value: Counter[tuple[str, str]] = field(default_factory=Counter)


async def fold(store: Store, shards: int, flow: str) -> Fold:
    out = Fold()
    async for e in events(store, shards, flow):
        t = e.get("t")
        if t == "message":
            out.status[e["m"]] = e["status"]
            if e.get("governance"):
                out.governance.add(e["m"])
            continue
        if t == "assigned":
            out.assigned.setdefault(e["experiment"], {}).setdefault(e["arm"], set()).add(e["c"])
            continue
        if t == "conversion":
            if e.get("experiment"):
                xp, arm = e["experiment"], e.get("arm") or ""
                out.converted.setdefault(xp, {}).setdefault(arm, set()).add(e["c"])
                out.value[(xp, arm)] += e.get("value") or 0
            continue
        if t == "started" and e.get("experiment"):
            out.started[(e["experiment"], e.get("arm") or "")] += 1
        rid = e.get("run")
        if rid is None:
            continue
        run = out.runs.get(rid)
        if run is None:
            run = out.runs[rid] = Run(contact=e["c"], run=rid, started_at=int(rid.rsplit("/", 1)[1]))
        if t == "replied":
            run.replies += 1
            if run.first_reply_ms is None:
                run.first_reply_ms = int(e.get("wait_ms", 0))
        elif t == "result":
            run.results[e["name"]] = (e.get("value"), e.get("category"))
        elif t == "ended":
            run.ended_at, run.outcome, run.node = int(e["at"]), e.get("outcome"), e.get("node")
        elif t == "consent" and e.get("status") == "opted_out":
            run.opted_out = True
    out.messages = Counter(s for m, s in out.status.items() if m not in out.governance)
    out.governance_messages = Counter(s for m, s in out.status.items() if m in out.governance)
    return out


def _rate(n: int, d: int) -> float | None:
    return round(n / d, 4) if d else None


def report(flow: str, f: Fold) -> dict[str, Any]:
    runs = list(f.runs.values())
    started = len(runs)
    ended = [r for r in runs if r.outcome is not None]
    outcomes = Counter(r.outcome for r in ended)
    waits = [r.first_reply_ms for r in runs if r.first_reply_ms is not None]
    m = f.messages
    known = sum(m[s] for s in FINAL)
    g = f.governance_messages
    return {
        "flow": flow,
        "runs": {
            "started": started,
            "completed": sum(1 for r in ended if r.completed),
            "expired": outcomes.get("expired", 0),
            "unanswered": outcomes.get("unanswered", 0),
            "in_progress": started - len(ended),
            "outcomes": dict(sorted(outcomes.items())),
        },
        "response_rate": _rate(sum(1 for r in runs if r.replies), started),
        "opt_out_rate": _rate(sum(1 for r in runs if r.opted_out), started),
        "median_time_to_reply_s": round(statistics.median(waits) / 1000, 3) if waits else None,
        "messages": {
            "total": sum(m.values()) - m.get("blocked", 0),
            **{s: m.get(s, 0) for s in FINAL},
            "blocked": m.get("blocked", 0),
            "awaiting_receipt": m.get("sent", 0),
            "delivery_rate": _rate(m.get("delivered", 0), known),
        },
        "governance_messages": {
            "total": sum(g.values()) - g.get("blocked", 0),
            **{s: g.get(s, 0) for s in FINAL},
            "blocked": g.get("blocked", 0),
            "awaiting_receipt": g.get("sent", 0),
        },
        "nps": _nps(runs),
        "experiments": {xp: _experiment(xp, f) for xp in sorted(f.assigned)},
        "drop_off": [
            {"node": node, "runs": n}
            for node, n in Counter(r.node for r in ended if not r.completed and r.node).most_common()
        ],
    }


def _experiment(xp: str, f: Fold) -> dict[str, Any]:
    """Per arm: assigned, started, converted, conversion rate; against the holdout, the lift (a
    difference of proportions) with its 95% confidence interval (Newcombe's) and whether the
    counts are enough to conclude anything."""
    arms = f.assigned[xp]
    conv = f.converted.get(xp, {})

    def rate(arm: str) -> tuple[int, int, float]:
        n = len(arms[arm])
        c = len(conv.get(arm, set()) & arms[arm])
        return n, c, c / n if n else 0.0

    out: dict[str, Any] = {}
    base = rate("holdout") if "holdout" in arms else None
    for arm in sorted(arms, key=lambda a: (a != "holdout", a)):
        n, c, p = rate(arm)
        row: dict[str, Any] = {
            "assigned": n, "started": f.started[(xp, arm)], "converted": c,
            "conversion_rate": round(p, 4), "value": f.value[(xp, arm)],
        }  # fmt: skip
        if base is not None and arm != "holdout" and n and base[0]:
            n0, c0, p0 = base
            low, high = newcombe(c, n, c0, n0)
            small = min(c, n - c, c0, n0 - c0) < MIN_EVENTS
            row["lift"] = round(p - p0, 4)
            row["lift_ci95"] = [round(low, 4), round(high, 4)]
            row["relative_lift"] = round((p - p0) / p0, 4) if p0 else None
            row["small_sample"] = small
            row["conclusive"] = not small and (low > 0 or high < 0)
        out[arm] = row
    return {"arms": out}


def wilson(c: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for the proportion c/n (no continuity correction): sound at 0/n
    and n/n, where the normal approximation collapses to a point."""
    p = c / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(c1: int, n1: int, c0: int, n0: int, z: float = Z95) -> tuple[float, float]:
    """The 95% interval for p1 - p0 (c1/n1 against c0/n0): Newcombe's hybrid score interval,
    method 10 of Newcombe (1998), "Interval estimation for the difference between independent
    proportions: comparison of eleven methods", Statistics in Medicine 17:873-890. Each
    proportion's Wilson interval bounds its side of the difference:
    lower = d - sqrt((p1 - l1)^2 + (u0 - p0)^2), upper = d + sqrt((u1 - p1)^2 + (p0 - l0)^2).
    Unlike Wald's, it never claims certainty from small groups (0/17 against 0/7 gives
    [-0.354, 0.184], not [0, 0]) and never leaves [-1, 1]."""
    p1, p0 = c1 / n1, c0 / n0
    l1, u1 = wilson(c1, n1, z)
    l0, u0 = wilson(c0, n0, z)
    d = p1 - p0
    return d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)


def _score(value: Any) -> int | None:
    """A whole score from 0 to 10 (9, 9.0, "9"), else None."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return int(v) if v.is_integer() and 0 <= v <= 10 else None


def _nps(runs: Iterable[Run]) -> dict[str, Any]:
    counts: dict[str, Counter[str]] = {}
    scores: dict[str, list[int]] = {}
    for r in runs:
        for name, (value, category) in r.results.items():
            if category in NPS_CATEGORIES:
                counts.setdefault(name, Counter())[category] += 1
                spread = scores.setdefault(name, [0] * 11)
                if (s := _score(value)) is not None:
                    spread[s] += 1
    out = {}
    for name, c in sorted(counts.items()):
        n = sum(c.values())
        out[name] = {
            "respondents": n,
            "promoters": c["promoter"],
            "passives": c["passive"],
            "detractors": c["detractor"],
            "score": round(100 * (c["promoter"] - c["detractor"]) / n, 1),
            "distribution": scores[name],
        }
    return out


def result_names(runs: Iterable[Run]) -> list[str]:
    return sorted({name for r in runs for name in r.results})


def row(r: Run, names: list[str]) -> dict[str, Any]:
    """One run as an export row (JSONL keeps ``results`` nested; CSV flattens it)."""
    return {
        "contact": r.contact, "started_at": r.started_at, "ended_at": r.ended_at, "outcome": r.outcome,
        "completed": r.completed, "replies": r.replies,
        "first_reply_s": None if r.first_reply_ms is None else round(r.first_reply_ms / 1000, 3),
        "opted_out": r.opted_out,
        "results": {
            n: {"value": r.results[n][0], "category": r.results[n][1]} for n in names if n in r.results
        },
    }  # fmt: skip
