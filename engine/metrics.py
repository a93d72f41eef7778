"""Every Prometheus metric Parley exports, behind one facade.

Call sites say ``metrics.turn_done(flow, result, seconds)``; only this module knows metric
names and labels. Each :class:`Metrics` has its own registry (no process-wide globals), so two
runtimes in one process (tests, the demo) never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Turn stages are fast; buckets from 100 µs to 2.5 s.
STAGE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class Metrics:
    """The facade. Methods are named after what happened, not after the metric."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
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
            ["stage"], buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self._turn = Histogram(
            "parley_turn_seconds",
            "Whole turn, accepted to committed.",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self._in_flight = Gauge("parley_turns_in_flight", "Turns being processed now.", registry=r)
        self._retries = Counter(
            "parley_turn_retries_total",
            "Turns decided again after losing a session race.",
            registry=r,
        )
        self._outbound = Counter(
            "parley_outbound_total", "Outbound send attempts, by gateway and status.",
            ["gateway", "status"], registry=r,
        )  # fmt: skip
        self._send = Histogram(
            "parley_send_seconds", "Time for a gateway to accept one message.", ["gateway"],
            buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self._http = Histogram(
            "parley_http_request_seconds", "HTTP API requests, by route and status.",
            ["route", "status"], buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip

    def inbound(self, gateway: str, result: str) -> None:
        self._inbound.labels(gateway, result).inc()

    def turn_started(self) -> None:
        self._in_flight.inc()

    def turn_done(self, flow: str, result: str, total_s: float, stages: dict[str, float]) -> None:
        self._in_flight.dec()
        self._turns.labels(flow or "-", result).inc()
        self._turn.observe(total_s)
        for stage, seconds in stages.items():
            self._stage.labels(stage).observe(seconds)

    def turn_retried(self) -> None:
        self._retries.inc()

    def sent(self, gateway: str, status: str, seconds: float | None = None) -> None:
        self._outbound.labels(gateway, status).inc()
        if seconds is not None:
            self._send.labels(gateway).observe(seconds)

    def http_request(self, route: str, status: int, seconds: float) -> None:
        self._http.labels(route, str(status)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
