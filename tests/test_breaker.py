"""The circuit breaker against a provider that is down, hangs, or asks us to slow down.

A 429 with a retry time (or an SMSC that keeps throttling) is a rate signal: the provider is up
and answering, so it pauses the connector for that long and never counts towards opening the
breaker. A probe has a short timeout of its own, so a hanging provider does not hold replies
for the whole send timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from engine.core import keys
from engine.core.clock import FakeClock
from engine.core.consumer import ensure_group
from engine.core.errors import GatewayTimeout
from gateways.base import SendPolicy
from gateways.simulators.http_carrier import SimulatedCarrier
from gateways.simulators.smsc import SimulatedSmsc, SmscBehaviour
from gateways.smpp import pdu
from tests.conftest import API_KEY, shard
from tests.test_sender import engine, number, settled, start
from tests.test_smpp_gateway import bound, gw_of, msg, smpp_gw


async def customers(
    carrier: SimulatedCarrier, url: str, texted: dict[str, float], done: asyncio.Event
) -> None:
    """A new customer texts in every 0.25 s until ``done``; ``texted``: number -> when."""
    i = 0
    while not done.is_set():
        n = number(i)
        texted[n] = await carrier.text_in(url, API_KEY, n, "nps")
        i += 1
        await asyncio.sleep(0.25)


async def queued(redis_url: str, gateway: str, contacts: list[str], text: str, now_ms: int) -> None:
    """Messages waiting in the gateway's reply lane, as a turn's commit leaves them."""
    r = aioredis.Redis.from_url(redis_url)
    for i, to in enumerate(contacts):
        msg_id = f"out-t-{i}"
        rec = {"id": msg_id, "dir": "out", "text": text, "to": to, "gateway": gateway, "status": "queued",
               "at": now_ms, "history": [["queued", now_ms]]}  # fmt: skip
        lane = keys.outbound_stream(shard(to), gateway)
        await ensure_group(r, lane, keys.OUTBOUND_GROUP)
        await r.zadd(keys.message_index(to, shard(to)), {msg_id: now_ms})
        await r.hset(keys.message_records(to, shard(to)), msg_id, orjson.dumps(rec))
        await r.xadd(lane, {"m": msg_id, "c": to, "t": text, "q": now_ms})
    await r.aclose()


async def test_429s_with_retry_after_pause_the_connector_that_long_and_never_open_the_breaker(
    redis_url: str,
    tmp_path: Path,
    carrier: SimulatedCarrier,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateways.circuit")
    carrier.now = clock.monotonic
    carrier.fail_next = [(429, {"Retry-After": "2"})] * 5  # as many as open the breaker (default 5)
    gw = {"carrier": {"type": "http", "url": carrier.url, "sender": "12345", "concurrency": 5}}
    contacts = [number(i) for i in range(5)]
    # Queued before the sender starts, so it takes all five at once and sends them together.
    await queued(redis_url, "carrier", contacts, "hello", clock.now_ms())
    async for e in engine(redis_url, tmp_path, gw, clock):
        for c in contacts:
            assert (await settled(e.api, c))["status"] == "sent"
        assert e.rt.senders["carrier"].circuit.state == "closed"
    throttled = [t for t, status in carrier.answers if status == 429]
    sent = [t for t, status in carrier.answers if status == 200]
    assert len(throttled) == 5 and len(sent) == 5
    # Sends resume once the 2 s the provider asked for are over (not after a 15 s open circuit).
    assert 2.0 <= min(sent) - max(throttled) <= 2.5, carrier.answers
    assert not [r.message for r in caplog.records if "circuit open" in r.message]
    assert sorted(m.to for m in carrier.received) == sorted(contacts)  # each exactly once


async def test_after_500s_a_hang_and_429s_replies_flow_within_seconds_of_recovery(
    redis_url: str, tmp_path: Path
) -> None:
    """The provider answers 500 for 2 s, hangs for 3 s, answers 429 (Retry-After: 1) for 7 s, then
    recovers, while a customer texts in every 0.25 s; the breaker runs on its defaults.

    Bound: every reply is on the handset within ``Retry-After`` + 1 s of the recovery, so no reply
    waits more than the outage itself plus that (12 s + 2 s here). Why: the 500s open the breaker
    (probes 1 s, 2 s, 4 s apart, at most ``circuit_cooldown_max`` = 5 s); the probe that lands in
    the hang gives up after ``probe_timeout`` (2 s), not the 10 s send timeout; so within 2 s + 5 s
    of the hang ending a probe meets the 429s (the phase is 7 s, so it is always tried); a 429 is
    an answer, which closes the breaker, and only pauses the connector for the second asked; so
    the moment the 429s stop, the waiting replies go. Real time: the hang is a real socket that
    never answers, timed out by the client's real timer."""
    defaults = SendPolicy()
    assert (defaults.probe_timeout, defaults.circuit_cooldown_max) == (2.0, 5.0)  # as the bound assumes
    async with SimulatedCarrier() as carrier:
        gw = {"carrier": {"type": "http", "url": carrier.url, "sender": "12345"}}
        async for e in engine(redis_url, tmp_path, gw):
            url = f"http://127.0.0.1:{e.rt.http_port}/v1/inbound/carrier"
            texted: dict[str, float] = {}
            done = asyncio.Event()
            task = asyncio.create_task(customers(carrier, url, texted, done))
            t0 = time.perf_counter()
            carrier.down = 500
            await asyncio.sleep(2)
            carrier.down, carrier.hang = 0, True
            await asyncio.sleep(3)
            carrier.hang, carrier.down = False, (429, {"Retry-After": "1"})
            throttle_at = time.perf_counter()
            await asyncio.sleep(7)
            carrier.down = 0
            recovered = time.perf_counter()
            await asyncio.sleep(0.5)
            done.set()
            await task
            got = {n: await carrier.next_message(n, timeout=20) for n in texted}
            await asyncio.sleep(0.5)  # a duplicate would arrive by now
    assert len(carrier.received) == len(texted)  # one reply each, none twice
    # The probe into the hang gave up after probe_timeout, and the 429 phase was tried.
    hung = [t for t, status in carrier.answers if status == 0]
    assert hung, carrier.answers
    after_hang = [t for t, _ in carrier.answers if t > hung[0]]
    assert after_hang and after_hang[0] - hung[0] <= 2.0 + 5.0 + 1.0, carrier.answers
    assert any(status == 429 and t >= throttle_at for t, status in carrier.answers)
    late = {n: round(m.at - recovered, 2) for n, m in got.items() if m.at - recovered > 2.0}
    assert not late, late
    waits = [got[n].at - texted[n] for n in texted]
    assert max(waits) <= (recovered - t0) + 2.0, max(waits)


async def test_an_smsc_that_keeps_throttling_pauses_the_connector_and_never_opens_the_breaker(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ESME_RTHROTTLED past ``throttle_retries`` reaches the pipeline as a rate signal, like a 429."""
    caplog.set_level(logging.INFO, logger="gateways.circuit")
    async with SimulatedSmsc(behaviour=SmscBehaviour(mode="throttling", max_rate=4)) as smsc:
        gw = smpp_gw(smsc, throttle_retries=1, concurrency=16)
        contacts = [number(i) for i in range(16)]
        async for e in engine(redis_url, tmp_path, {"smsc": gw}):
            await bound(e.rt)
            await start(e.api, "note", contacts, text="hello")
            for c in contacts:
                assert (await settled(e.api, c, timeout=20))["status"] in ("sent", "delivered")
            metrics = e.rt.metrics.render().decode()
            assert e.rt.senders["smsc"].circuit.state == "closed"
    assert 'parley_outbound_total{gateway="smsc",status="throttled"}' in metrics
    assert not [r.message for r in caplog.records if "circuit open" in r.message]
    accepted = [s for s in smsc.received if s.status == pdu.ESME_ROK]
    assert sorted("+" + s.dest for s in accepted) == sorted(contacts)  # each exactly once


async def test_an_smpp_probe_waits_probe_timeout_for_its_submit_sm_resp_not_response_timeout(
    redis_url: str, tmp_path: Path
) -> None:
    async with SimulatedSmsc(behaviour=SmscBehaviour(latency=1.0)) as smsc:
        async for e in engine(redis_url, tmp_path, {"smsc": smpp_gw(smsc, response_timeout="5s")}):
            await bound(e.rt)
            gw = gw_of(e)
            loop = asyncio.get_running_loop()
            began = loop.time()
            with pytest.raises(GatewayTimeout, match=r"within 0\.2s") as slow:
                await gw.send(msg("hello", mid="m-probe"), timeout=0.2)
            assert loop.time() - began < 0.9 and slow.value.ambiguous
            smsc.behaviour.latency = 0.0
            assert (await gw.send(msg("hello again", mid="m-next"))).provider_id  # the bind carries on
