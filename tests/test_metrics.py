"""The metrics facade adds figures up between flushes (engine/core/metrics.py): what a scrape
shows after a flush must be exactly what recording each figure straight into prometheus_client
would have shown, and nothing recorded may stay unflushed for long."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from engine.core import metrics as metrics_module
from engine.core.metrics import LATENCY_BUCKETS, Metrics

#: Durations around and exactly on the bucket bounds (a value equal to a bound is in that bucket).
durations = st.one_of(st.sampled_from(LATENCY_BUCKETS), st.floats(0, 5, allow_nan=False))
turns = st.lists(
    st.tuples(
        st.sampled_from(["nps", "appointment", ""]),
        st.sampled_from(["replied", "duplicate", "no_reply"]),
        durations,
        st.dictionaries(st.sampled_from(["queue_wait", "load", "decide", "commit"]), durations),
    ),
    max_size=30,
)
sends = st.lists(
    st.tuples(st.sampled_from(["sent", "failed"]), st.none() | durations, durations), max_size=20
)


def direct(m: Metrics, recorded: list, sent: list) -> None:
    """The same figures, each written straight through prometheus_client (the old way)."""
    for flow, result, total, stages in recorded:
        m._in_flight.inc()
        m._in_flight.dec()
        m._turns.labels(flow or "-", result).inc()
        if result == "duplicate":
            m._duplicates.labels("turn").inc()
        m._turn.observe(total)
        for stage, s in stages.items():
            m._stage.labels(stage).observe(s)
    for status, seconds, queued in sent:
        m._outbound.labels("sms", status).inc()
        if seconds is not None:
            m._send.labels("sms").observe(seconds)
        m._queued.labels("sms", "reply").observe(queued)
        m._segments.labels("sms").inc(2)
        m._gate.labels("sent").inc(1)
        m._http.labels("/v1/inbound/{gateway}", "202").observe(queued)


@settings(max_examples=60, deadline=None)
@given(recorded=turns, sent=sends)
def test_a_flush_shows_exactly_what_recording_each_figure_would_have(recorded: list, sent: list) -> None:
    added, reference = Metrics(), Metrics()
    for flow, result, total, stages in recorded:
        added.turn_started()
        added.turn_done(flow, result, total, stages)
    for status, seconds, queued in sent:
        added.sent("sms", status, seconds)
        added.dispatched("sms", "reply", queued, 2)
        added.gate("sent", 1)
        added.http_request("/v1/inbound/{gateway}", 202, queued)
    direct(reference, recorded, sent)
    assert samples(added.render()) == samples(generate_latest(reference.registry))


def samples(text: bytes) -> list[bytes]:
    """Parley's lines of the exposition but the ``_created`` timestamps (when each series was first
    used); the process's own figures (CPU, memory, GC) differ from one render to the next."""
    return [line for line in text.splitlines() if b"parley_" in line and b"_created" not in line]


async def test_figures_reach_the_values_by_themselves_within_the_flush_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a running event loop a figure is written later, once per period, without a scrape."""
    monkeypatch.setattr(metrics_module, "FLUSH_S", 0.01)
    m = Metrics()
    m.inbound("sms", "accepted")
    assert not m.registry.get_sample_value("parley_inbound_total", {"gateway": "sms", "result": "accepted"})
    value = None
    for _ in range(100):
        await asyncio.sleep(0.01)
        value = m.registry.get_sample_value("parley_inbound_total", {"gateway": "sms", "result": "accepted"})
        if value:
            break
    assert value == 1.0
    m.inbound("sms", "accepted")
    m.inbound("sms", "duplicate")
    assert m.render().count(b"parley_inbound_total") >= 2  # a scrape flushes first
    assert (
        m.registry.get_sample_value("parley_inbound_total", {"gateway": "sms", "result": "accepted"}) == 2.0
    )
    assert m.registry.get_sample_value("parley_duplicates_dropped_total", {"stage": "inbound"}) == 1.0
