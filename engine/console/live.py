"""The Overview's figures, read cheaply and only while someone looks.

Two sources, neither on the hot path:

- the Prometheus values this process already keeps (``Metrics.collect()``: with worker
  processes, every process's, as ``/metrics`` adds them up): turn counts and latency buckets,
  gate decisions, segments on the wire, receipts, circuit and bind gauges. Each poll of
  ``/console/api/overview`` takes a *sample* of the counters; rates and latency percentiles are
  differences between samples (percentiles interpolated within histogram buckets, as
  Prometheus's ``histogram_quantile`` does). Samples are kept for :data:`KEEP_S` and only taken
  when asked for, so the series start when the first viewer opens the page;
- Redis, in one pipelined round trip: each shard's inbound stream (length, pending, oldest
  entry), each connector's reply and bulk lanes, the worker and sender leases (who reads which
  shards), SMPP bind leases, and Redis's clock.

Answers are cached for :data:`CACHE_S`, so ten viewers cost what one does.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.console.ports import ConsoleServices
from engine.core import depths, keys

#: How long samples are kept (the sparklines' width).
KEEP_S = 600.0
#: The window of the headline rates and percentiles.
WINDOW_S = 60.0
#: Samples closer together than this are not taken (a poll in between reuses the last answer).
CACHE_S = 1.0

#: The families sampled: counters (and histograms' buckets) by name; gauges read as they are.
COUNTERS = (
    "parley_turns",
    "parley_gate",
    "parley_outbound_segments",
    "parley_outbound_messages",
    "parley_outbound",
    "parley_receipts",
    "parley_inbound",
)
HISTOGRAMS = ("parley_turn_seconds", "parley_outbound_queue_seconds")
GAUGES = ("parley_circuit_open", "parley_smpp_binds_up")

Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Sample:
    """The counters at one moment: (name, labels) -> value; ``t`` monotonic s, ``ms`` wall clock."""

    t: float
    ms: int
    values: dict[Key, float]
    gauges: dict[Key, float]


def take_sample(families: Iterable[Any], t: float, ms: int) -> Sample:
    """The values of the sampled families (a ``Metrics.collect()`` result)."""
    values: dict[Key, float] = {}
    gauges: dict[Key, float] = {}
    for family in families:
        if family.name in COUNTERS or family.name in HISTOGRAMS:
            for s in family.samples:
                if s.name.endswith("_created") or s.name.endswith("_gsum") or s.name.endswith("_gcount"):
                    continue
                values[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
        elif family.name in GAUGES:
            for s in family.samples:
                gauges[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return Sample(t, ms, values, gauges)


def total(sample: Sample, name: str, **match: str) -> float:
    """The sum of ``name``'s values whose labels include ``match``."""
    return sum(
        v for (n, labels), v in sample.values.items()
        if n == name and all(dict(labels).get(k) == want for k, want in match.items())
    )  # fmt: skip


def by_label(sample: Sample, name: str, label: str, **match: str) -> dict[str, float]:
    """``name``'s values summed per value of ``label`` (over the other labels)."""
    out: dict[str, float] = {}
    for (n, labels), v in sample.values.items():
        d = dict(labels)
        if n == name and label in d and all(d.get(k) == want for k, want in match.items()):
            out[d[label]] = out.get(d[label], 0.0) + v
    return out


def buckets(sample: Sample, histogram: str, **match: str) -> list[tuple[float, float]]:
    """A histogram's cumulative buckets ``[(le, count)]`` (summed over other labels), by ``le``."""
    per_le: dict[float, float] = {}
    for (n, labels), v in sample.values.items():
        d = dict(labels)
        if n == histogram + "_bucket" and all(d.get(k) == want for k, want in match.items()):
            le = math.inf if d["le"] == "+Inf" else float(d["le"])
            per_le[le] = per_le.get(le, 0.0) + v
    return sorted(per_le.items())


def bucket_delta(new: list[tuple[float, float]], old: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """What was observed between two readings of one histogram (a restarted process: ``new``)."""
    before = dict(old)
    delta = [(le, count - before.get(le, 0.0)) for le, count in new]
    return new if any(c < 0 for _, c in delta) else delta


def quantile(q: float, cumulative: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile (0..1) of observations in cumulative buckets ``[(le, count)]``,
    interpolated linearly inside its bucket (the first bucket starts at 0). None: no
    observations. Past the last finite bucket: that bucket's bound (as Prometheus answers)."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    n = cumulative[-1][1]
    rank = q * n
    counts = [c for _, c in cumulative]
    i = bisect.bisect_left(counts, rank)
    i = min(i, len(cumulative) - 1)
    le, count = cumulative[i]
    if math.isinf(le):
        finite = [b for b, _ in cumulative if not math.isinf(b)]
        return finite[-1] if finite else None
    lower, below = cumulative[i - 1] if i > 0 else (0.0, 0.0)
    if count == below:
        return le
    return lower + (le - lower) * (rank - below) / (count - below)


def rate(new: float, old: float, seconds: float) -> float:
    """Per second between two counter readings (a counter that went down restarted: ``new``)."""
    if seconds <= 0:
        return 0.0
    return max(0.0, (new - old if new >= old else new) / seconds)


@dataclass
class Sampler:
    """The samples taken so far (one per poll, at least :data:`CACHE_S` apart, :data:`KEEP_S` kept)
    and the last answer."""

    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=int(KEEP_S / CACHE_S) + 1))
    answer: dict[str, Any] | None = None
    answered_at: float = -math.inf
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def add(self, sample: Sample) -> None:
        while self.samples and sample.t - self.samples[0].t > KEEP_S:
            self.samples.popleft()
        self.samples.append(sample)

    def window_start(self, now: Sample, seconds: float) -> Sample:
        """The oldest sample within ``seconds`` of ``now``; when none but ``now`` is, the one
        before it (nobody looked for a while: the window stretches back to the last look);
        ``now`` itself when it is the first."""
        before = now
        for s in self.samples:
            if s is now:
                return before
            if now.t - s.t <= seconds + CACHE_S / 2:
                return s
            before = s
        return now


async def overview(rt: ConsoleServices, sampler: Sampler) -> dict[str, Any]:
    """``/console/api/overview``'s answer (cached :data:`CACHE_S`)."""
    async with sampler.lock:
        if sampler.answer is not None and rt.clock.monotonic() - sampler.answered_at < CACHE_S:
            return sampler.answer
        now = take_sample(rt.metrics.collect(), rt.clock.monotonic(), rt.clock.now_ms())
        sampler.add(now)
        state = await read_redis(rt)
        sampler.answer = build(rt, sampler, now, state)
        sampler.answered_at = now.t
        return sampler.answer


def _series(sampler: Sampler, fn: Any) -> list[float | None]:
    """``fn(previous, sample)`` over consecutive samples (the sparklines)."""
    out = []
    prev = None
    for s in sampler.samples:
        if prev is not None:
            out.append(fn(prev, s))
        prev = s
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def latency(sampler: Sampler, now: Sample, histogram: str, **match: str) -> dict[str, Any]:
    """p50 and p99 (ms) over the window, and per sample interval (the sparklines)."""
    start = sampler.window_start(now, WINDOW_S)
    d = bucket_delta(buckets(now, histogram, **match), buckets(start, histogram, **match))

    def at(prev: Sample, s: Sample, q: float) -> float | None:
        observed = bucket_delta(buckets(s, histogram, **match), buckets(prev, histogram, **match))
        return _ms(quantile(q, observed))

    return {
        "p50_ms": _ms(quantile(0.5, d)),
        "p99_ms": _ms(quantile(0.99, d)),
        "count": round(d[-1][1]) if d else 0,
        "series_p50": _series(sampler, lambda a, b: at(a, b, 0.5)),
        "series_p99": _series(sampler, lambda a, b: at(a, b, 0.99)),
    }


def build(
    rt: ConsoleServices, sampler: Sampler, now: Sample, redis_state: Mapping[str, Any]
) -> dict[str, Any]:
    """The figures from the samples and what Redis said."""
    start = sampler.window_start(now, WINDOW_S)
    span = now.t - start.t

    def turns_rate(a: Sample, b: Sample) -> float:
        return round(rate(total(b, "parley_turns_total"), total(a, "parley_turns_total"), b.t - a.t), 2)

    gate_now = by_label(now, "parley_gate_total", "decision")
    gate_then = by_label(start, "parley_gate_total", "decision")
    gate = [
        {"decision": d, "total": round(v), "per_min": round(rate(v, gate_then.get(d, 0.0), span) * 60, 1)}
        for d, v in sorted(gate_now.items(), key=lambda kv: -kv[1])
    ]
    lanes: dict[str, dict[str, int]] = redis_state["lanes"]
    gateways = []
    seg_now = by_label(now, "parley_outbound_segments_total", "gateway")
    seg_then = by_label(start, "parley_outbound_segments_total", "gateway")
    for name, gw in rt.gateways.items():
        circuit = now.gauges.get(("parley_circuit_open", (("gateway", name),)))
        sender = rt.senders.get(name)
        state = sender.circuit.state if sender is not None else ("open" if circuit else "closed")
        binds = redis_state["binds"].get(name)
        up = now.gauges.get(("parley_smpp_binds_up", (("gateway", name),)))
        if binds is not None and up is not None:
            binds = {**binds, "up": round(up)}
        gateways.append({
            "name": name,
            "type": str(rt.config.gateways.get(name, {}).get("type", type(gw).__name__)),
            "can_send": gw.can_send,
            "rate_per_s": round(rate(seg_now.get(name, 0.0), seg_then.get(name, 0.0), span), 2)
            if span > 0
            else None,
            "configured_rate": gw.policy.rate,
            "backlog": lanes.get(name, {"reply": 0, "bulk": 0}),
            "circuit": state,
            "binds": binds,
            "senders": redis_state["senders"].get(name, {}),
        })  # fmt: skip
    inbound = redis_state["inbound"]
    return {
        "at": now.ms,
        "window_s": WINDOW_S,
        "sampled_s": round(now.t - sampler.samples[0].t, 1),
        "turns": {
            "per_s": turns_rate(start, now) if span > 0 else None,
            "total": round(total(now, "parley_turns_total")),
            "series": _series(sampler, turns_rate),
        },
        "turn_latency": latency(sampler, now, "parley_turn_seconds"),
        "reply_wait": latency(sampler, now, "parley_outbound_queue_seconds", lane="reply"),
        "inbound": inbound,
        "outbound": {
            "reply": sum(v["reply"] for v in lanes.values()),
            "bulk": sum(v["bulk"] for v in lanes.values()),
        },
        "gate": gate,
        "gateways": gateways,
        "workers": redis_state["workers"],
        "unread_shards": redis_state["unread_shards"],
        "shards": rt.config.engine.shards,
        "roles": list(rt.roles),
    }


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _holders(raw: Any, now_ms: int) -> dict[str, list[int]]:
    """A lease hash (shard or bind index -> "holder|expires ms") as holder -> its shards
    (unexpired only; other fields, such as the bind leases' "h:" heartbeats, are not leases)."""
    out: dict[str, list[int]] = {}
    if isinstance(raw, Exception) or not raw:
        return out
    for shard, value in raw.items():
        who, _, exp = _text(value).rpartition("|")
        if _text(shard).isdigit() and exp.isdigit() and int(exp) > now_ms:  # not "h:" heartbeats
            out.setdefault(who, []).append(int(_text(shard)))
    return {who: sorted(shards) for who, shards in sorted(out.items())}


async def read_redis(rt: ConsoleServices) -> dict[str, Any]:
    """The streams, lanes, leases and binds, in one pipelined round trip."""
    n = rt.config.engine.shards
    senders = [name for name, gw in rt.gateways.items() if gw.can_send]
    smpp = [name for name in rt.gateways if rt.config.gateways.get(name, {}).get("type") == "smpp"]
    r = rt.store.redis
    async with r.pipeline(transaction=False) as pipe:
        query = depths.DepthQuery(pipe, n, senders)
        pipe.hgetall(keys.leases("worker"))
        for name in senders:
            pipe.hgetall(keys.leases(f"sender:{name}"))
        for name in smpp:
            pipe.hgetall(keys.binds(name))
        res = list(await pipe.execute(raise_on_error=False))
    # Stream entry ids, leases and binds are stamped by Redis's clock (the wall clock; the
    # engine's own is the same one outside tests).
    now_ms = int(time.time() * 1000)
    got = query.read(res)
    depth = sum(d.length or 0 for d in got.shards)
    pending = sum(d.pending or 0 for d in got.shards if d.length is not None)
    oldest = max(
        [0.0, *((now_ms - d.first_ms) / 1000 for d in got.shards if d.length is not None and d.first_ms)]
    )
    lanes: dict[str, dict[str, int]] = {}
    for (name, lane), per_shard in got.lanes.items():
        lanes.setdefault(name, {})[lane] = sum(v for v in per_shard if v is not None)
    i = query.count
    workers = _holders(res[i], now_ms)
    i += 1
    sender_leases = {}
    for name in senders:
        sender_leases[name] = _holders(res[i], now_ms)
        i += 1
    binds: dict[str, Any] = {}
    for name in smpp:
        held = _holders(res[i], now_ms)
        i += 1
        configured = rt.config.gateways[name].get("binds", 1)
        binds[name] = {"held": sum(len(v) for v in held.values()), "of": configured, "by": held}
    held_shards = {s for shards in workers.values() for s in shards}
    return {
        "inbound": {
            "depth": depth,
            "pending": pending,
            "waiting": max(0, depth - pending),
            "oldest_s": round(oldest, 3),
        },
        "lanes": lanes,
        "workers": [{"id": who, "shards": shards} for who, shards in workers.items()],
        "unread_shards": [s for s in range(n) if s not in held_shards],
        "senders": sender_leases,
        "binds": binds,
    }
