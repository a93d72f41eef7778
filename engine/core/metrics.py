"""Every Prometheus metric Parley exports, behind one facade.

Call sites say ``metrics.turn_done(flow, result, seconds)``; only this module knows metric
names and labels. Each :class:`Metrics` has its own registry (no process-wide globals), so two
runtimes in one process (tests, the demo) never collide.

With worker processes (``parley run --workers N``) every process writes its figures to files in
``$PROMETHEUS_MULTIPROC_DIR`` (set by ``parley run`` before anything imports the client) and
``/metrics`` on the HTTP process adds them up, so turn latencies from every worker are in one
scrape. The stream gauges are read from Redis at scrape time by the process serving ``/metrics``.

What every turn and every send records (counters, histograms, the in-flight gauge) is added up
in plain dicts and written to the Prometheus values at most every :data:`FLUSH_S` (and before
each scrape this process serves): one multiprocess value write per label set and bucket per
flush instead of a locked write per event (profiled at 1,000 turns/s: about 4-6% of each
process's CPU). A scrape served by another process sees this one's figures up to FLUSH_S late.

Beside Parley's own figures a scrape has prometheus_client's standard ones: ``process_*`` (CPU,
memory, open files, start time), ``python_gc_*`` (collections per generation) and
``python_info``, and ``parley_build_info`` (version, commit, Python). In one process they are
read at scrape time. The multiprocess files cannot carry a collector that is read at scrape
time (the serving process would report only itself), so there every process writes its own
``process_*`` and ``python_gc_*`` figures every :data:`SAMPLE_S` (and the serving process just
before the scrape) as gauges that keep one series per process (label ``pid``), dropped when
the process ends; ``python_info`` is the serving process's (every process runs the same
interpreter).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import importlib.metadata
import math
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: The longest a recorded figure waits before it reaches the Prometheus values (seconds).
FLUSH_S = 0.5

#: How often each process writes its process and GC figures in multiprocess mode (seconds).
SAMPLE_S = 5.0

#: Latency buckets, 100 µs to 60 s: turn stages are fast, and 20 ms (the design budget of a
#: turn's p99, docs/operations.md) is a bound of its own, so "turns over budget" is exact; a
#: send waits for the provider up to the connector's timeout (10 s by default), so a send that
#: ran into it lands in a finite bucket (15 s) rather than only in +Inf.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 15.0, 30.0, 60.0,
)  # fmt: skip

#: The build's commit, written into the package by the image build (Dockerfile, ARG
#: PARLEY_COMMIT); a checkout without it reports "unknown".
COMMIT_FILE = Path(__file__).with_name("BUILD_COMMIT")


def send_buckets(longest_timeout: float) -> tuple[float, ...]:
    """:data:`LATENCY_BUCKETS`, reaching twice ``longest_timeout`` (the longest a connector waits
    for its provider) when that is beyond them, so a send that timed out is in a finite bucket."""
    if 2 * longest_timeout <= LATENCY_BUCKETS[-1]:
        return LATENCY_BUCKETS
    return (*LATENCY_BUCKETS, float(math.ceil(2 * longest_timeout)))


def build_info() -> dict[str, str]:
    """What ``parley_build_info`` says: the package version, the commit (if the build wrote one)
    and the Python version."""
    try:
        version = importlib.metadata.version("parley")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree never installed
        version = "unknown"
    try:
        commit = COMMIT_FILE.read_text().strip() or "unknown"
    except OSError:
        commit = "unknown"
    return {"version": version, "commit": commit, "python": platform.python_version()}


class Metrics:
    """The facade. Methods are named after what happened, not after the metric."""

    def __init__(self, longest_timeout: float = 0.0) -> None:
        """``longest_timeout``: the longest any connector waits for its provider (seconds); the
        send latency buckets reach beyond it (:func:`send_buckets`)."""
        #: Pending increments by Prometheus child (counters and gauges), and per histogram child
        #: its bucket counts and sum; label children cached (``labels()`` takes a lock).
        self._adds: dict[Any, float] = {}
        self._observed: dict[Any, list[float]] = {}
        self._children: dict[tuple[Any, ...], Any] = {}
        self._flush_due: asyncio.TimerHandle | None = None
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        #: Multiprocess mode: this process's process and GC figures, one gauge per sample name.
        self._own: dict[str, Gauge] = {}
        if self._multiprocess:
            self._sources: list[Any] = [ProcessCollector(registry=None), GCCollector(CollectorRegistry())]
            self.sample_process()
        else:  # read at scrape time, by the one process there is
            ProcessCollector(registry=r)
            GCCollector(registry=r)
            PlatformCollector(registry=r)
        info = build_info()
        Gauge(
            "parley_build_info", "Always 1: the running build's version, commit and Python version.",
            list(info), registry=r, multiprocess_mode="max",
        ).labels(**info).set(1)  # fmt: skip
        self._inbound = Counter(
            "parley_inbound_total", "Inbound texts offered, by gateway and result.",
            ["gateway", "result"], registry=r,
        )  # fmt: skip
        self._turns = Counter(
            "parley_turns_total",
            "Turns processed, by flow and result.",
            ["flow", "result"],
            registry=r,
        )
        self._stage = Histogram(
            "parley_turn_stage_seconds",
            "Time per turn stage: queue_wait (accepted -> picked up), load, decide, commit.",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self._turn = Histogram(
            "parley_turn_seconds",
            "Whole turn, accepted to committed.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._crm_calls = Counter(
            "parley_crm_calls_total", "CRM webhook calls of flows with a cache: ok, failed, cached (answered "
            "from the cache).", ["result"], registry=r,
        )  # fmt: skip
        self._smpp_submits = Counter(
            "parley_smpp_submits_total",
            "submit_sm answered, by gateway and command status (ESME_ROK, ESME_RTHROTTLED, timeout...).",
            ["gateway", "status"], registry=r,
        )  # fmt: skip
        self._smpp_bound = Gauge(
            "parley_smpp_binds_up", "SMPP binds bound now, by gateway.", ["gateway"], registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self._smpps_requests = Counter(
            "parley_smpp_server_requests_total",
            "Submits (submit_sm, data_sm, submit_multi) from ESMEs bound into Parley, by account, command "
            "and the status answered (ESME_ROK, ESME_RTHROTTLED...).",
            ["account", "command", "status"], registry=r,
        )  # fmt: skip
        self._smpps_binds = Gauge(
            "parley_smpp_server_binds_up", "ESMEs bound into Parley now, by account.", ["account"],
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self._in_flight = Gauge(
            "parley_turns_in_flight", "Turns being processed now.", registry=r, multiprocess_mode="livesum"
        )
        self._duplicates = Counter(
            "parley_duplicates_dropped_total",
            "Duplicates dropped: an inbound text whose (gateway, provider id) was seen (stage=inbound), "
            "an event redelivered after it was applied (stage=turn).",
            ["stage"], registry=r,
        )  # fmt: skip
        self._gate = Counter(
            "parley_gate_total",
            "Outbound messages through the governance gate, by decision: sent (queued), opted_out, "
            "suppressed, no_marketing_consent, capped (blocked; the record keeps the reason), deferred "
            "(quiet hours).",
            ["decision"], registry=r,
        )  # fmt: skip
        self._lag = Gauge(
            "parley_stream_lag", "Inbound entries no worker has read yet, per shard.", ["shard"],
            registry=r, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self._pending = Gauge(
            "parley_stream_pending", "Inbound entries read by a worker and not yet acknowledged, per shard.",
            ["shard"], registry=r, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self._oldest = Gauge(
            "parley_stream_oldest_seconds", "Age of the oldest unprocessed inbound entry, per shard.",
            ["shard"], registry=r, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self._workers = Gauge(
            "parley_workers_live", "Workers with a live heartbeat in Redis.", registry=r,
            multiprocess_mode="mostrecent",
        )  # fmt: skip
        self._dead = Counter(
            "parley_dead_letters_total",
            "Inbound events a worker gave up on after they failed repeatedly (moved to p:dead).",
            registry=r,
        )
        self._retries = Counter(
            "parley_turn_retries_total",
            "Turns decided again after losing a session race.",
            registry=r,
        )
        self._reviews = Counter(
            "parley_opt_out_reviews_total",
            "Inbound texts with an opt-out keyword that neither opted out nor were a near miss: each "
            "is an opt_out_review outcome event for a person to read (engine/governance/optout.py).",
            registry=r,
        )
        self._outbound = Counter(
            "parley_outbound_total", "Outbound send attempts, by gateway and status.",
            ["gateway", "status"], registry=r,
        )  # fmt: skip
        self._send = Histogram(
            "parley_send_seconds", "Time for a gateway to accept one message.", ["gateway"],
            buckets=send_buckets(longest_timeout), registry=r,
        )  # fmt: skip
        self._queued = Histogram(
            "parley_outbound_queue_seconds",
            "Queued (committed) to handed to the provider, by gateway and lane (reply, bulk).",
            ["gateway", "lane"], buckets=(*LATENCY_BUCKETS, 300.0), registry=r,
        )  # fmt: skip
        self._finished = Counter(
            "parley_outbound_messages_total",
            "Messages leaving the send pipeline, by gateway and outcome: sent, failed, expired (older "
            "than max_age), rerouted (failed over to the next connector).",
            ["gateway", "outcome"], registry=r,
        )  # fmt: skip
        self._segments = Counter(
            "parley_outbound_segments_total", "Message segments handed to each gateway.", ["gateway"],
            registry=r,
        )  # fmt: skip
        self._circuit = Gauge(
            "parley_circuit_open", "1 while a gateway's circuit breaker is open (not sending, probing).",
            # live: a sender process that died with its circuit open (the senders run in the
            # worker processes) must not hold the gauge at 1 once its supervisor saw it die
            ["gateway"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self._lane_depth = Gauge(
            "parley_outbound_backlog", "Messages waiting in a gateway's lane (read at scrape).",
            ["gateway", "lane"], registry=r, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self._receipts = Counter(
            "parley_receipts_total",
            "Delivery receipts by gateway, our status and result (applied, parked: before the send "
            "was recorded, gone: the message left the log).",
            ["gateway", "status", "result"], registry=r,
        )  # fmt: skip
        self._http = Histogram(
            "parley_http_request_seconds", "HTTP API requests, by route and status.",
            ["route", "status"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip

        self._webhooks = Counter(
            "parley_webhook_deliveries_total",
            "CRM outcome webhook events, by webhook (index) and result: delivered (2xx), retry (a "
            "retryable failure, tried again), dead (given up: dead-lettered).",
            ["webhook", "result"], registry=r,
        )  # fmt: skip
        self._webhook_latency = Histogram(
            "parley_webhook_delivery_seconds",
            "Outcome event appended to a p:fx:T (or replayed) -> acknowledged by the CRM, by webhook.",
            ["webhook"], buckets=(*LATENCY_BUCKETS, 300.0, 900.0, 3600.0), registry=r,
        )  # fmt: skip
        self._webhook_lost = Counter(
            "parley_webhook_events_lost_total",
            "Outcome events trimmed from a p:fx:T (engine.outcome_events_max) before a webhook sent them.",
            ["webhook"], registry=r,
        )  # fmt: skip

    # -- recording, added up between flushes ----------------------------------------------------

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels) if labels else metric
        return child

    def _add(self, child: Any, amount: float = 1.0) -> None:
        self._adds[child] = self._adds.get(child, 0.0) + amount
        if self._flush_due is None:
            self._schedule()

    def _observe(self, child: Any, value: float) -> None:
        pending = self._observed.get(child)
        if pending is None:
            # One count per bucket (the last is +Inf), then the sum.
            pending = self._observed[child] = [0.0] * (len(child._upper_bounds) + 1)
        pending[bisect.bisect_left(child._upper_bounds, value)] += 1
        pending[-1] += value
        if self._flush_due is None:
            self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()  # no event loop to flush later from: at once
            return
        self._flush_due = loop.call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        """Write what was recorded since the last flush to the Prometheus values."""
        if self._flush_due is not None:
            self._flush_due.cancel()
            self._flush_due = None
        adds, self._adds = self._adds, {}
        observed, self._observed = self._observed, {}
        for child, amount in adds.items():
            child._value.inc(amount)  # a gauge's net change may be negative: no Counter.inc check
        for child, pending in observed.items():
            for bucket, count in zip(child._buckets, pending, strict=False):
                if count:
                    bucket.inc(count)
            child._sum.inc(pending[-1])

    def inbound(self, gateway: str, result: str) -> None:
        self._add(self._child(self._inbound, gateway, result))
        if result == "duplicate":
            self._add(self._child(self._duplicates, "inbound"))

    def turn_started(self) -> None:
        self._add(self._in_flight)

    def turn_done(self, flow: str, result: str, total_s: float, stages: dict[str, float]) -> None:
        self._add(self._in_flight, -1.0)
        self._add(self._child(self._turns, flow or "-", result))
        if result == "duplicate":
            self._add(self._child(self._duplicates, "turn"))
        self._observe(self._turn, total_s)
        for stage, seconds in stages.items():
            self._observe(self._child(self._stage, stage), seconds)

    def dead_lettered(self, n: int) -> None:
        self._dead.inc(n)

    def turn_retried(self) -> None:
        self._add(self._retries)

    def sent(self, gateway: str, status: str, seconds: float | None = None) -> None:
        self._add(self._child(self._outbound, gateway, status))
        if seconds is not None:
            self._observe(self._child(self._send, gateway), seconds)

    def dispatched(self, gateway: str, lane: str, queued_s: float, segments: int) -> None:
        self._observe(self._child(self._queued, gateway, lane), queued_s)
        self._add(self._child(self._segments, gateway), segments)

    def finished(self, gateway: str, outcome: str) -> None:
        self._add(self._child(self._finished, gateway, outcome))

    def circuit(self, gateway: str, is_open: bool) -> None:
        self._circuit.labels(gateway).set(1 if is_open else 0)

    def backlog(self, gateway: str, lane: str, n: int) -> None:
        self._lane_depth.labels(gateway, lane).set(n)

    def smpp_submit(self, gateway: str, status: str) -> None:
        self._smpp_submits.labels(gateway, status).inc()

    def smpp_binds(self, gateway: str, up: int) -> None:
        self._smpp_bound.labels(gateway).set(up)

    def smpp_server_request(self, account: str, command: str, status: str) -> None:
        self._smpps_requests.labels(account, command, status).inc()

    def smpp_server_binds(self, account: str, up: int) -> None:
        self._smpps_binds.labels(account).set(up)

    def crm_call(self, result: str) -> None:
        self._crm_calls.labels(result).inc()

    def receipt(self, gateway: str, status: str, result: str) -> None:
        self._add(self._child(self._receipts, gateway, status, result))

    def http_request(self, route: str, status: int, seconds: float) -> None:
        self._observe(self._child(self._http, route, str(status)), seconds)

    def opt_out_review(self) -> None:
        self._add(self._reviews)

    def gate(self, decision: str, n: int = 1) -> None:
        if n:
            self._add(self._child(self._gate, decision), n)

    def streams(self, shard: int, lag: int, pending: int, oldest_s: float) -> None:
        label = str(shard)
        self._lag.labels(label).set(lag)
        self._pending.labels(label).set(pending)
        self._oldest.labels(label).set(oldest_s)

    def workers_live(self, n: int) -> None:
        self._workers.set(n)

    def webhook(self, webhook: str, result: str, n: int = 1, seconds: list[float] | None = None) -> None:
        self._webhooks.labels(webhook, result).inc(n)
        for s in seconds or ():
            self._webhook_latency.labels(webhook).observe(s)

    def webhook_lost(self, webhook: str, n: int) -> None:
        self._webhook_lost.labels(webhook).inc(n)

    def collect(self) -> list[Any]:
        """Every metric family with its current samples (``prometheus_client`` ``Metric``s): this
        process's, or with worker processes every process's, added up as ``/metrics`` shows them.
        For readers inside the engine (the console's Overview), at the moment they ask."""
        self.flush()
        path = os.environ.get(MULTIPROC_ENV)
        if not path:
            return list(self.registry.collect())
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path)  # type: ignore[no-untyped-call]
        return list(merged.collect())

    # -- this process's own figures (multiprocess mode) -----------------------------------------

    def sample_process(self) -> None:
        """Multiprocess mode: write this process's process and GC figures (as the standard
        collectors read them now) to its gauges; a no-op in one process (read at scrape)."""
        if not self._multiprocess:
            return
        for source in self._sources:
            for family in source.collect():
                for sample in family.samples:
                    gauge = self._own.get(sample.name)
                    if gauge is None:
                        gauge = self._own[sample.name] = Gauge(
                            sample.name, f"{family.documentation} (per process: label pid).",
                            sorted(sample.labels), registry=None, multiprocess_mode="liveall",
                        )  # fmt: skip
                    (gauge.labels(**sample.labels) if sample.labels else gauge).set(sample.value)

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        """While entered (in a running event loop): :meth:`sample_process` every
        :data:`SAMPLE_S`, so a process that serves no scrape (a worker) keeps its figures fresh."""
        if not self._multiprocess:
            yield
            return
        loop = asyncio.get_running_loop()
        due: asyncio.TimerHandle | None = None

        def tick() -> None:
            nonlocal due
            self.sample_process()
            due = loop.call_later(SAMPLE_S, tick)

        tick()
        try:
            yield
        finally:
            if due is not None:
                due.cancel()

    def render(self) -> bytes:
        self.flush()
        path = os.environ.get(MULTIPROC_ENV)
        if not path:
            return generate_latest(self.registry)
        self.sample_process()
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path)  # type: ignore[no-untyped-call]
        PlatformCollector(registry=merged)
        return generate_latest(merged)
