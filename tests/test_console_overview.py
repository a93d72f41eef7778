"""The Overview's figures (issue 20): what the engine did shows up, read from the metrics it
keeps and from Redis, with rates and percentiles over the fake clock."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from engine.app.runtime import Runtime
from engine.console.live import quantile
from engine.core import keys
from engine.core.clock import FakeClock
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import eventually
from tests.console_support import VIEWER, ConsoleClient, console_config, text_in

NUMBERS = ["+447700900111", "+447700900222", "+447700900333"]


async def lanes_empty(rt: Runtime) -> bool:
    lanes = [keys.outbound_stream(s, "carrier", lane) for s in range(4) for lane in keys.LANES]
    return sum([await rt.store.redis.xlen(k) for k in lanes]) == 0


async def overview(c: ConsoleClient) -> dict[str, Any]:
    status, body = await c.get_json("/console/api/overview")
    assert status == 200, body
    return dict(body)


async def test_turns_replies_and_gate_decisions_show_with_their_rates(
    console_rt: Runtime, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    base = f"http://127.0.0.1:{console_rt.http_port}"
    async with ConsoleClient(console_rt) as c:
        await c.login(VIEWER)
        first = await overview(c)
        assert first["turns"] == {"per_s": None, "total": 0, "series": []}
        assert first["workers"] == [{"id": first["workers"][0]["id"], "shards": [0, 1, 2, 3]}]
        assert first["unread_shards"] == []
        [gw] = first["gateways"]
        assert (gw["name"], gw["type"], gw["circuit"], gw["backlog"]) == ("carrier", "http", "closed",
                                                                           {"reply": 0, "bulk": 0})  # fmt: skip
        for i, number in enumerate(NUMBERS):
            await text_in(base, number, "csat", f"mo-{i}")
            await carrier.next_message(number)
        await eventually(lambda: lanes_empty(console_rt))  # each send recorded after the handset has it
        clock.advance(2)
        o = await overview(c)
        assert o["turns"]["total"] == 3 and o["turns"]["per_s"] == 1.5 and o["turns"]["series"] == [1.5]
        assert o["turn_latency"]["count"] == 3 and o["turn_latency"]["p50_ms"] is not None
        assert o["reply_wait"]["count"] == 3
        assert {g["decision"]: g["total"] for g in o["gate"]} == {"sent": 3}
        assert o["gate"][0]["per_min"] == 90.0  # 3 in 2 s
        assert o["gateways"][0]["rate_per_s"] == 1.5  # 3 one-segment texts in 2 s
        assert o["inbound"]["depth"] == 0 and o["outbound"] == {"reply": 0, "bulk": 0}
        # Within a second the answer is the cached one: no new sample.
        clock.advance(0.5)
        assert await overview(c) == o
        # Quiet for a minute and more: the rates fall to 0, the totals stay.
        clock.advance(61)
        o = await overview(c)
        assert o["turns"]["per_s"] == 0.0 and o["turns"]["total"] == 3
        assert o["gate"] == [{"decision": "sent", "total": 3, "per_min": 0.0}]
        assert o["turn_latency"]["p50_ms"] is None


async def test_texts_nobody_reads_show_as_inbound_depth_and_unread_shards(
    redis_url: str, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    cfg = console_config(redis_url, carrier)
    async with Runtime(cfg, clock=clock, worker=False, senders=False) as rt, ConsoleClient(rt) as c:
        base = f"http://127.0.0.1:{rt.http_port}"
        for i, number in enumerate(NUMBERS):
            await text_in(base, number, "csat", f"mo-{i}")
        clock.advance(3)
        await c.login(VIEWER)
        o = await overview(c)
        assert o["inbound"]["depth"] == 3 and o["inbound"]["pending"] == 0
        assert 0 <= o["inbound"]["oldest_s"] < 60  # by Redis's clock (entry ids), not the fake one
        assert o["workers"] == [] and o["unread_shards"] == [0, 1, 2, 3]
        assert o["roles"] == ["api"]


async def test_replies_no_sender_takes_show_as_the_connectors_backlog(
    redis_url: str, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    cfg = console_config(redis_url, carrier)
    async with Runtime(cfg, clock=clock, senders=False) as rt, ConsoleClient(rt) as c:
        assert rt.worker is not None
        done = []
        rt.worker.listeners.append(done.append)
        base = f"http://127.0.0.1:{rt.http_port}"
        for i, number in enumerate(NUMBERS):
            await text_in(base, number, "csat", f"mo-{i}")
        await c.login(VIEWER)
        for _ in range(200):
            o = await overview(c)
            if o["outbound"]["reply"] == 3:
                break
            clock.advance(CACHE_STEP)
        assert o["outbound"] == {"reply": 3, "bulk": 0}
        assert o["gateways"][0]["backlog"] == {"reply": 3, "bulk": 0}
        assert o["gateways"][0]["senders"] == {}


CACHE_STEP = 1.5


def test_the_quantile_of_buckets_reads_as_prometheus_does() -> None:
    cumulative = [(0.001, 10.0), (0.01, 90.0), (0.1, 100.0), (math.inf, 100.0)]
    assert quantile(0.5, cumulative) == 0.001 + (0.01 - 0.001) * (50 - 10) / 80
    assert quantile(0.05, cumulative) == 0.0005  # inside the first bucket, from 0
    assert quantile(0.99, cumulative) == 0.01 + (0.1 - 0.01) * 9 / 10
    assert quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    assert quantile(0.99, [(0.1, 1.0), (math.inf, 5.0)]) == 0.1  # past the last bound: that bound


BOUNDS = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0)


@given(st.lists(st.floats(min_value=0, max_value=20), min_size=1, max_size=200), st.floats(0.01, 0.99))
def test_a_bucketed_quantile_lies_in_the_bucket_of_the_true_one(values: list[float], q: float) -> None:
    cumulative = [(b, float(sum(1 for v in values if v <= b))) for b in BOUNDS] + [
        (math.inf, float(len(values)))
    ]
    got = quantile(q, cumulative)
    assert got is not None
    ranked = sorted(values)
    true = ranked[max(0, math.ceil(q * len(values)) - 1)]
    upper = next((b for b in BOUNDS if true <= b), BOUNDS[-1])
    lower = max([0.0] + [b for b in BOUNDS if b < true])
    assert lower - 1e-12 <= got <= upper + 1e-12
    assert quantile(min(0.999, q + 0.001), cumulative) >= got  # type: ignore[operator]
