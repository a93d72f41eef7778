"""A cancel must win every race with the sender: a message whose cancel was answered
``cancelled`` never reaches the provider, and one that reached it was never reported cancelled.

Against real Redis and a simulated HTTP provider on loopback: many single messages sent and
cancelled at once, the cancels landing before, during and after the sender takes them; and the
hand-over key's two scripts (the sender's claim.lua, the API's cancel.lua) driven by hypothesis
through random interleavings, checked against a model."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.app.runtime import Runtime
from engine.core import keys
from engine.core.scripts.cancel import CancelArgs, parse_outcome
from engine.core.store import Store
from gateways.scripts import install
from gateways.scripts.claim import ClaimArgs, parse_verdict
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import API_KEY, eventually, make_config, redis_client

pytestmark = pytest.mark.redis_modes


@pytest.fixture
async def live(
    redis_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Runtime, aiohttp.ClientSession, SimulatedCarrier]]:
    async with SimulatedCarrier(delay=0.002) as carrier:
        gw = {"carrier": {"type": "http", "url": carrier.url, "sender": "1", "concurrency": 8}}
        cfg = make_config(redis_url, gateways=gw)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with (
            Runtime(cfg) as rt,
            aiohttp.ClientSession(f"http://127.0.0.1:{rt.http_port}", headers=headers) as api,
        ):
            yield rt, api, carrier


@pytest.mark.timeout(120)
async def test_no_cancelled_message_reaches_the_provider(
    live: tuple[Runtime, aiohttp.ClientSession, SimulatedCarrier],
) -> None:
    _, api, carrier = live
    rng = random.Random(19)
    n = 300
    outcome: dict[str, int] = {}

    async def one(i: int) -> None:
        to = f"+4477009{i:05d}"
        lane = "reply" if i % 2 else "bulk"
        async with api.post("/v1/messages", json={"to": to, "text": f"m{i}", "lane": lane}) as r:
            assert r.status == 202
            mid = (await r.json())["id"]
        await asyncio.sleep(rng.random() * 0.03)  # before, during or after the sender takes it
        async with api.delete(f"/v1/messages/{mid}") as r:
            assert r.status in (200, 409), await r.text()
            outcome[mid] = r.status

    await asyncio.gather(*(one(i) for i in range(n)))
    cancelled = {m for m, s in outcome.items() if s == 200}
    too_late = {m for m, s in outcome.items() if s == 409}
    assert cancelled and too_late, "the race should go both ways in this many tries"

    async def settled() -> bool:
        return len({m.id for m in carrier.received}) >= len(too_late)

    await eventually(settled, attempts=4000)
    await asyncio.sleep(0.2)  # anything wrongly sent after a cancel would arrive by now
    sent = {m.id for m in carrier.received}
    assert not (sent & cancelled), f"{len(sent & cancelled)} cancelled messages were sent"
    assert sent == too_late  # a cancel told "too late" means it was handed over (and sent)
    for mid in list(cancelled)[:20]:
        async with api.get(f"/v1/messages/{mid}") as r:
            assert (await r.json())["status"] == "cancelled"


# The two scripts on one key, against a model ---------------------------------------------------

OPS = st.lists(
    st.tuples(st.sampled_from(["claim", "cancel", "tick"]), st.integers(min_value=0, max_value=3)),
    min_size=1, max_size=12,
)  # fmt: skip


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, validity=st.one_of(st.none(), st.integers(min_value=1, max_value=4)))
def test_claim_and_cancel_agree_with_the_model(
    redis_url: str, ops: list[tuple[str, int]], validity: int | None
) -> None:
    """Exactly one of the sender and the canceller wins a unit; an expired one goes to neither;
    every later call of either says so consistently."""
    asyncio.run(_against_the_model(redis_url, ops, validity))


async def _against_the_model(redis_url: str, ops: list[tuple[str, int]], validity: int | None) -> None:
    r: aioredis.Redis = redis_client(redis_url)
    store = Store(r)
    install(store)
    shard = random.randrange(4)
    unit = f"msg-{shard}-1-{random.getrandbits(32):08x}"
    key = keys.handover(shard, unit)
    now = 0
    if validity is not None:
        await r.set(key, f"p|{validity}")
    state = "pending"  # the model: pending | handed | cancelled | expired
    try:
        for op, _ in ops:
            if op == "tick":
                now += 1
                continue
            if op == "claim":
                claim = ClaimArgs(key, now)
                got = parse_verdict(await store.run("claim", keys=claim.to_keys(), args=claim.to_argv()))
                if state == "pending":
                    state = "expired" if validity is not None and validity <= now else "handed"
                assert got == {"handed": "ok", "cancelled": "cancelled", "expired": "expired"}[state]
            else:
                cancel = CancelArgs(shard, unit, now, 60, 1000)
                got = parse_outcome(await store.run("cancel", keys=cancel.to_keys(), args=cancel.to_argv()))
                want = {
                    "pending": "cancelled",
                    "handed": "handed",
                    "cancelled": "already",
                    "expired": "expired",
                }
                assert got == want[state]
                if state == "pending":
                    state = "cancelled"
    finally:
        await r.delete(key)
        await r.aclose()


async def test_a_crowd_of_claims_and_cancels_on_one_unit_has_one_winner(redis_url: str) -> None:
    """Concurrent claims (several senders, retries) and cancels on one key: one side wins, every
    call agrees with that."""
    r: aioredis.Redis = redis_client(redis_url)
    store = Store(r)
    install(store)
    try:
        for round_ in range(50):
            shard = round_ % 4
            unit = f"msg-{shard}-{round_}-race"
            key = keys.handover(shard, unit)
            calls: list[Any] = []
            for i in range(10):
                if (i + round_) % 2:
                    c = ClaimArgs(key, 0)
                    calls.append(("claim", store.run("claim", keys=c.to_keys(), args=c.to_argv())))
                else:
                    x = CancelArgs(shard, unit, 0, 60, 1000)
                    calls.append(("cancel", store.run("cancel", keys=x.to_keys(), args=x.to_argv())))
            random.shuffle(calls)
            got = await asyncio.gather(*(c for _, c in calls))
            answers = [
                (kind, (g.decode() if isinstance(g, bytes) else g))
                for (kind, _), g in zip(calls, got, strict=True)
            ]
            sent = any(kind == "claim" and a == "ok" for kind, a in answers)
            cancelled = any(kind == "cancel" and a == "cancelled" for kind, a in answers)
            assert sent != cancelled, answers
            if sent:
                assert all(a in ("ok", "handed") for _, a in answers), answers
            else:
                assert all(a in ("cancelled", "already") for _, a in answers), answers
            await r.delete(key)
    finally:
        await r.aclose()
