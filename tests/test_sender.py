"""The send pipeline against misbehaving providers: retries, Retry-After, rejections, expiry,
the circuit breaker, failover without duplicates, lanes, the rate on the wire, receipts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from engine.app.runtime import Runtime
from engine.core import keys
from engine.core.clock import FakeClock
from engine.core.redis_embedded import free_port
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import ANN, API_KEY, eventually, make_config, redis_client, shard

#: Each test that takes redis_url runs on one Redis and on a Redis Cluster (tests/conftest.py).
pytestmark = pytest.mark.redis_modes

TWO_STEP = """
name: two_step
start: hello
nodes:
  hello: {say: "First {{ params.n }}", goto: second}
  second: {say: "Second {{ params.n }}", goto: third}
  third: {say: "Third {{ params.n }}", end: done}
"""
NOTE = """
name: note
start: hello
nodes:
  hello: {say: "{{ params.text }}", end: done}
"""
SECRET = "receipt-secret-0123456789"
NPS = (Path(__file__).resolve().parent.parent / "rules" / "nps.yaml").read_text()


def number(i: int) -> str:
    return f"+4477009{i:05d}"


async def messages(api: aiohttp.ClientSession, contact: str = ANN) -> list[dict[str, Any]]:
    async with api.get("/v1/messages", params={"contact": contact}) as r:
        assert r.status == 200, await r.text()
        result: list[dict[str, Any]] = (await r.json())["messages"]
        return result


async def settled(api: aiohttp.ClientSession, contact: str = ANN, timeout: float = 5.0) -> dict[str, Any]:
    """The contact's last outbound message once the pipeline is done with it (not queued)."""

    async def probe() -> dict[str, Any] | None:
        out = [m for m in await messages(api, contact) if m["dir"] == "out"]
        return out[-1] if out and out[-1]["status"] != "queued" else None

    result: dict[str, Any] = await eventually(probe, attempts=int(timeout / 0.005))
    return result


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (real time, bounded) until ``condition()`` holds: for paced sends, which take time."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def start(api: aiohttp.ClientSession, flow: str, contacts: list[str], **params: Any) -> None:
    await asyncio.gather(*(api.put(f"/v1/contacts/{c}", json={}) for c in contacts))
    async with api.post(f"/v1/flows/{flow}/start", json={"contacts": contacts, "params": params}) as r:
        assert r.status == 202, await r.text()


class Engine:
    """A runtime with the given gateways and an authenticated API client."""

    def __init__(self, rt: Runtime, api: aiohttp.ClientSession) -> None:
        self.rt = rt
        self.api = api


async def engine(
    redis_url: str, tmp_path: Path, gateways: dict[str, Any], clock: FakeClock | None = None, **sections: Any
) -> AsyncIterator[Engine]:
    for name, text in (("two_step", TWO_STEP), ("note", NOTE)):
        (tmp_path / f"{name}.yaml").write_text(text)
    (tmp_path / "nps.yaml").write_text(NPS)
    cfg = make_config(redis_url, engine={"flows_dir": str(tmp_path)}, gateways=gateways, **sections)
    async with (
        Runtime(cfg, clock=clock) as rt,
        aiohttp.ClientSession(
            f"http://127.0.0.1:{rt.http_port}", headers={"Authorization": f"Bearer {API_KEY}"}
        ) as api,
    ):
        yield Engine(rt, api)


@pytest.fixture
async def one(
    redis_url: str, tmp_path: Path, carrier: SimulatedCarrier, clock: FakeClock
) -> AsyncIterator[Engine]:
    gw = {"carrier": {"type": "http", "url": carrier.url, "sender": "12345", "webhook_secret": SECRET}}
    async for e in engine(redis_url, tmp_path, gw, clock):
        carrier.receipt_url = f"http://127.0.0.1:{e.rt.http_port}/v1/receipts/carrier"
        carrier.receipt_secret = SECRET
        yield e


# Retries -------------------------------------------------------------------------------------


async def test_retryable_failures_are_retried_with_backoff_until_sent(
    one: Engine, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    carrier.fail_next = [503, 500, 502]
    before = clock.now_ms()
    await start(one.api, "note", [ANN], text="hello")
    await carrier.next_message(ANN)
    rec = await settled(one.api)
    assert carrier.attempts == 4 and len(carrier.received) == 1
    assert rec["status"] == "sent" and rec["provider_id"] == carrier.received[0].provider_id
    # Back-off on the injected clock: 1 s, 2 s, 4 s, each with jitter in [50%, 100%].
    waited = (clock.now_ms() - before) / 1000
    assert 3.5 <= waited <= 7.0, waited


async def test_retry_after_from_the_provider_is_honoured(
    one: Engine, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    carrier.fail_next = [(429, {"Retry-After": "7"})]
    before = clock.now_ms()
    await start(one.api, "note", [ANN], text="hello")
    await carrier.next_message(ANN)
    assert await settled(one.api)
    assert clock.now_ms() - before == 7000  # exactly the provider's wait, no jitter


async def test_a_rejection_fails_the_message_at_once(one: Engine, carrier: SimulatedCarrier) -> None:
    carrier.fail_next = [400]
    await start(one.api, "note", [ANN], text="hello")
    rec = await settled(one.api)
    assert rec["status"] == "failed" and "HTTP 400" in rec["error"]
    assert [h["status"] for h in rec["history"]] == ["queued", "failed"]
    assert carrier.attempts == 1 and carrier.received == []


async def test_a_message_older_than_max_age_expires_instead_of_going_out_late(
    redis_url: str, tmp_path: Path, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    carrier.down = 503
    gw = {"carrier": {"type": "http", "url": carrier.url, "max_age": "2m", "max_attempts": 1000}}
    async for e in engine(redis_url, tmp_path, gw, clock):
        await start(e.api, "note", [ANN], text="your table is ready")
        rec = await settled(e.api)
        carrier.down = 0
        assert rec["status"] == "expired"
        assert "HTTP 503" in rec["error"]  # the last failure says why it never went
        assert carrier.received == []
        assert (
            await e.rt.store.redis.xlen(keys.outbound_stream(shard(ANN), "carrier", "bulk")) == 0
        )  # acknowledged


async def test_messages_to_one_contact_arrive_in_order_with_a_slow_carrier(
    redis_url: str, tmp_path: Path
) -> None:
    async with SimulatedCarrier(delay=0.01) as carrier:
        gw = {"carrier": {"type": "http", "url": carrier.url, "concurrency": 8}}
        async for e in engine(redis_url, tmp_path, gw):
            await e.api.put(f"/v1/contacts/{ANN}", json={})
            for n in range(3):
                await e.api.post("/v1/flows/two_step/start", json={"contacts": [ANN], "params": {"n": n}})
            got = [(await carrier.next_message(ANN)).text for _ in range(9)]
    assert got == [f"{w} {n}" for n in range(3) for w in ("First", "Second", "Third")]


# Circuit breaker -----------------------------------------------------------------------------


async def test_a_provider_down_for_an_hour_is_probed_not_hammered(
    redis_url: str, tmp_path: Path, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    carrier.down = 503
    carrier.now = clock.monotonic
    gw = {
        "carrier": {
            "type": "http", "url": carrier.url, "max_age": "1h", "max_attempts": 1000, "backoff": "1s",
            "backoff_max": "60s", "circuit_failures": 3, "circuit_cooldown": "10s", "circuit_cooldown_max": "5m",
        }
    }  # fmt: skip
    contacts = [number(i) for i in range(5)]
    async for e in engine(redis_url, tmp_path, gw, clock):
        await start(e.api, "note", contacts, text="hello")
        for c in contacts:
            assert (await settled(e.api, c))["status"] == "expired"
        open_metric = await (await e.api.get("/metrics")).text()
    # Without the breaker 5 messages retried every <= 60 s for an hour make ~350 requests. With
    # it: the first failures, then one probe at a time, 10 s, 20 s, ... 5 min apart. (Counted
    # over the first hour: under load a message may be queued later, and probed until it expires.)
    first_hour = [t for t, _ in carrier.answers if t <= 3600]
    assert len(first_hour) <= 5 + 20, carrier.answers
    assert 'parley_circuit_open{gateway="carrier"} 1.0' in open_metric


async def test_the_circuit_closes_when_a_probe_succeeds_and_the_queue_drains(
    redis_url: str, tmp_path: Path, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    carrier.fail_next = [503] * 3
    gw = {"carrier": {"type": "http", "url": carrier.url, "circuit_failures": 3, "concurrency": 1}}
    contacts = [number(i) for i in range(6)]
    async for e in engine(redis_url, tmp_path, gw, clock):
        await start(e.api, "note", contacts, text="hello")
        for c in contacts:
            assert (await settled(e.api, c))["status"] == "sent"
        sender = e.rt.senders["carrier"]
        assert sender.circuit.state == "closed"
    assert sorted(m.to for m in carrier.received) == sorted(contacts)  # each exactly once


# Routing and failover ------------------------------------------------------------------------


@pytest.fixture
async def two(
    redis_url: str, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[tuple[Engine, SimulatedCarrier, SimulatedCarrier]]:
    async with SimulatedCarrier(name="a") as a, SimulatedCarrier(name="b") as b:
        policy = {"circuit_failures": 2, "max_attempts": 3, "backoff": "1s"}
        gw = {
            "a": {"type": "http", "url": a.url, **policy},
            "b": {"type": "http", "url": b.url, **policy},
        }
        async for e in engine(redis_url, tmp_path, gw, clock, routing=[{"via": ["a", "b"]}]):
            yield e, a, b


async def test_a_provider_that_is_down_fails_over_and_nothing_is_sent_twice(
    two: tuple[Engine, SimulatedCarrier, SimulatedCarrier],
) -> None:
    e, a, b = two
    a.down = 503  # "not taken": safe to send elsewhere
    contacts = [number(i) for i in range(8)]
    await start(e.api, "note", contacts, text="hello")
    for c in contacts:
        rec = await settled(e.api, c)
        assert rec["status"] == "sent" and rec["gateway"] == "b"
        hops = [h for h in rec["history"] if h["status"] == "rerouted"]
        assert len(hops) == 1 and hops[0]["detail"].startswith("b: ")
    assert a.received == []
    assert sorted(m.to for m in b.received) == sorted(contacts)


async def test_a_message_the_provider_may_have_taken_is_never_failed_over(
    two: tuple[Engine, SimulatedCarrier, SimulatedCarrier],
) -> None:
    e, a, b = two
    a.down = 500  # maybe taken: retried at a with the same id, never handed to b
    await start(e.api, "note", [ANN], text="hello")
    rec = await settled(e.api)
    assert rec["status"] == "failed" and "HTTP 500" in rec["error"]
    assert a.attempts == 3 and b.attempts == 0


async def test_a_message_read_back_after_a_crash_stays_on_its_connector(
    redis_url: str, tmp_path: Path, clock: FakeClock
) -> None:
    """A send interrupted by a crash may have reached the provider: it is pinned to it."""

    r = redis_client(redis_url)
    lane = keys.outbound_stream(shard(ANN), "a", "bulk")
    await r.xgroup_create(lane, keys.OUTBOUND_GROUP, id="0", mkstream=True)
    rec = {"id": "out-x-0", "dir": "out", "text": "hello", "to": ANN, "gateway": "a", "status": "queued",
           "at": clock.now_ms(), "history": [["queued", clock.now_ms()]]}  # fmt: skip
    await r.zadd(keys.message_index(ANN, shard(ANN)), {"out-x-0": 1})
    await r.hset(keys.message_records(ANN, shard(ANN)), "out-x-0", orjson.dumps(rec))
    await r.xadd(lane, {"m": "out-x-0", "c": ANN, "t": "hello", "r": "b", "q": clock.now_ms()})
    # A previous sender read it and died before recording (the new one claims it with the shard).
    await r.xreadgroup(keys.OUTBOUND_GROUP, "dead-host-1-s-0", {lane: ">"})
    await r.aclose()
    async with SimulatedCarrier(name="a") as a, SimulatedCarrier(name="b") as b:
        a.down = 503
        policy = {"circuit_failures": 1, "max_attempts": 2, "backoff": "1s"}
        gw = {"a": {"type": "http", "url": a.url, **policy}, "b": {"type": "http", "url": b.url, **policy}}
        async for e in engine(redis_url, tmp_path, gw, clock, routing=[{"via": ["a", "b"]}]):
            rec = await settled(e.api)
            assert await e.rt.store.redis.xlen(lane) == 0
        assert rec["status"] == "failed" and rec["gateway"] == "a"
        assert a.attempts == 2 and b.attempts == 0


async def test_routing_by_country_sends_each_number_through_its_connector(
    redis_url: str, tmp_path: Path, clock: FakeClock
) -> None:
    async with SimulatedCarrier(name="uk") as uk, SimulatedCarrier(name="us") as us:
        gw = {"uk": {"type": "http", "url": uk.url}, "us": {"type": "http", "url": us.url}}
        routing = [{"match": {"country": "GB"}, "via": ["uk"]}, {"via": ["us"]}]
        async for e in engine(redis_url, tmp_path, gw, clock, routing=routing):
            await start(e.api, "note", [ANN, "+12125550123"], text="hi")
            await uk.next_message(ANN)
            await us.next_message("+12125550123")
        assert [m.to for m in uk.received] == [ANN] and [m.to for m in us.received] == ["+12125550123"]


# Lanes and rate ------------------------------------------------------------------------------


async def test_a_reply_overtakes_a_bulk_backlog(redis_url: str, tmp_path: Path) -> None:
    async with SimulatedCarrier() as carrier:
        gw = {"carrier": {"type": "http", "url": carrier.url, "rate": 40}}
        async for e in engine(redis_url, tmp_path, gw):
            bulk = [number(i) for i in range(120)]  # 3 s of sending at 40/s
            await start(e.api, "note", bulk, text="offer")
            await until(lambda: len(carrier.received) >= 5)
            await carrier.text_in(
                f"http://127.0.0.1:{e.rt.http_port}/v1/inbound/carrier", API_KEY, ANN, "nps"
            )
            await carrier.next_message(ANN, timeout=10)
            bulk_before_reply = len(carrier.received) - 1
    # The reply waited for at most a few slots, not for the 115 bulk messages still queued.
    assert bulk_before_reply < 20, bulk_before_reply


async def test_the_rate_holds_in_every_one_second_window(redis_url: str, tmp_path: Path) -> None:
    async with SimulatedCarrier() as carrier:
        gw = {"carrier": {"type": "http", "url": carrier.url, "rate": 20}}
        async for e in engine(redis_url, tmp_path, gw):
            contacts = [number(i) for i in range(35)]
            await start(e.api, "note", contacts, text="hi")
            await until(lambda: len(carrier.received) == 35)
    at = sorted(m.at for m in carrier.received)
    busiest = max(sum(1 for t in at if s <= t < s + 1.0) for s in at)
    # Stamped when the stub's own event loop reads each request: on a loaded machine one of them
    # can be read late enough to share a window with the one twenty sends after it. What Parley
    # bounds exactly is when it sends (rate.lua's log, tests/test_rate.py); this is the wire
    # seen by a receiver with jitter, so one more is tolerated, never two.
    assert busiest <= 21, busiest
    assert at[-1] - at[0] >= 34 / 20 * 0.95  # evenly spaced, not bursts


async def test_a_three_part_message_costs_three_slots(redis_url: str, tmp_path: Path) -> None:
    async with SimulatedCarrier() as carrier:
        gw = {"carrier": {"type": "http", "url": carrier.url, "rate": 30}}
        async for e in engine(redis_url, tmp_path, gw):
            long_text = "x" * 400  # GSM-7, 400 septets: 3 segments of 153
            await start(e.api, "note", [number(i) for i in range(6)], text=long_text)
            await until(lambda: len(carrier.received) == 6)
    at = sorted(m.at for m in carrier.received)
    # 3 segments / 30 per second: 0.1 s a message (less a late wake-up's catch-up, 20 ms at most)
    assert at[-1] - at[0] >= 5 * 0.1 - 0.03, at
    assert max(sum(1 for t in at if a <= t < a + 1) for a in at) * 3 <= 30


# Receipts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["after", "before"])
async def test_receipts_mark_messages_delivered_whenever_they_arrive(
    one: Engine, carrier: SimulatedCarrier, when: str
) -> None:
    carrier.receipts = when  # "before": the provider reports delivery before answering the send
    await start(one.api, "note", [ANN], text="hello")

    async def delivered() -> dict[str, Any] | None:
        log = await messages(one.api)
        return log[-1] if log and log[-1]["status"] == "delivered" else None

    rec = await eventually(delivered)
    assert [h["status"] for h in rec["history"]] == ["queued", "sent", "delivered"]

    async def answered() -> list[int]:  # the carrier reads the answer just after it is applied
        return carrier.receipt_answers

    assert await eventually(answered) == [200]


async def test_a_late_sent_never_moves_a_delivered_message_back(
    one: Engine, carrier: SimulatedCarrier
) -> None:
    await start(one.api, "note", [ANN], text="hello")
    rec = await settled(one.api)
    pid = rec["provider_id"]
    for status in ("delivered", "sent"):
        await post_receipt(one, {"id": pid, "status": status})
    rec = (await messages(one.api))[-1]
    assert rec["status"] == "delivered"  # the late report is kept in the history only
    assert [h["status"] for h in rec["history"]] == ["queued", "sent", "delivered", "sent"]


async def post_receipt(
    e: Engine, body: dict[str, Any], *, ts: int | None = None, secret: str = SECRET
) -> int:
    import hashlib
    import hmac

    raw = orjson.dumps(body)
    stamp = int(time.time()) if ts is None else ts
    sig = hmac.new(secret.encode(), f"{stamp}.".encode() + raw, hashlib.sha256).hexdigest()
    headers = {"X-Parley-Timestamp": str(stamp), "X-Parley-Signature": f"sha256={sig}"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"http://127.0.0.1:{e.rt.http_port}/v1/receipts/carrier", data=raw, headers=headers) as r,
    ):
        return r.status


async def test_receipt_webhooks_need_a_fresh_valid_signature(one: Engine) -> None:
    body = {"id": "sim-1", "status": "delivered"}
    assert await post_receipt(one, body) == 200
    assert await post_receipt(one, body, secret="wrong-secret-000000000") == 401
    assert await post_receipt(one, body, ts=int(time.time()) - 3600) == 401  # a replay
    async with aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{one.rt.http_port}/v1/receipts/carrier"
        async with s.post(url, json=body) as r:
            assert r.status == 401
            assert "X-Parley-Signature" in (await r.json())["error"]["message"]


async def test_an_unknown_provider_status_is_refused_with_the_field(one: Engine) -> None:
    assert await post_receipt(one, {"id": "sim-1", "status": "teleported"}) == 422


async def test_unreachable_provider_is_retried_then_failed(
    redis_url: str, tmp_path: Path, clock: FakeClock
) -> None:
    gw = {"dead": {"type": "http", "url": f"http://127.0.0.1:{free_port()}/send", "max_attempts": 3}}
    async for e in engine(redis_url, tmp_path, gw, clock):
        await start(e.api, "note", [ANN], text="hello")
        rec = await settled(e.api)
    assert rec["status"] == "failed" and "cannot connect" in rec["error"]


# Several sender processes ---------------------------------------------------------------------


async def test_two_processes_split_the_shards_send_each_message_once_in_order_and_take_over_on_stop(
    redis_url: str, carrier: SimulatedCarrier
) -> None:
    """Two runtimes (as two hosts) send through one connector: each reads the lanes of the
    shards it leases, every message goes out once and a contact's in order; when one stops with
    messages still in its hands, the other takes its shards over and sends them."""
    import collections
    import contextlib

    import redis.asyncio as aioredis

    from engine.core.consumer import ensure_group
    from engine.core.leases import lease_holders
    from gateways.base import OutboundMessage, SendResult

    cfg = make_config(
        redis_url,
        engine={"lease_ttl": "1s", "shutdown_timeout": "1s"},
        gateways={"carrier": {"type": "http", "url": carrier.url, "sender": "1"}},
    )
    contacts = [number(i) for i in range(16)]
    assert {shard(c) for c in contacts} == set(range(4))
    calls: collections.Counter[str] = collections.Counter()
    by: dict[str, set[int]] = {"a": set(), "b": set()}
    gate = {"a": asyncio.Event(), "b": asyncio.Event()}
    gate["a"].set()
    gate["b"].set()

    async def queue(r: aioredis.Redis, batch: str) -> None:
        now = int(time.time() * 1000)
        for c in contacts:
            for k in range(3):
                mid = f"out-{batch}-{c}-{k}"
                rec = {"id": mid, "dir": "out", "text": f"{batch}{k}", "to": c, "status": "queued",
                       "at": now, "history": [["queued", now]]}  # fmt: skip
                lane = keys.outbound_stream(shard(c), "carrier")
                await ensure_group(r, lane, keys.OUTBOUND_GROUP)
                await r.hset(keys.message_records(c, shard(c)), mid, orjson.dumps(rec))
                await r.xadd(lane, {"m": mid, "c": c, "t": f"{batch}{k}", "q": now})

    def arrived(batch: str) -> dict[str, list[str]]:
        got: dict[str, list[str]] = collections.defaultdict(list)
        for d in carrier.received:
            if d.text.startswith(batch):
                got[d.to].append(d.text)
        return got

    a_stack = contextlib.AsyncExitStack()
    async with a_stack, contextlib.AsyncExitStack() as b_stack:
        runtimes = {}
        for name, stack in (("a", a_stack), ("b", b_stack)):
            rt = await stack.enter_async_context(Runtime(cfg, http=False, worker=False))
            gw = rt.gateways["carrier"]
            real = gw.send

            async def counted(
                msg: OutboundMessage, timeout: float | None = None, name: str = name, real: Any = real
            ) -> SendResult:
                await gate[name].wait()
                calls[msg.id] += 1
                by[name].add(shard(msg.to))
                return await real(msg, timeout=timeout)

            gw.send = counted  # type: ignore[method-assign]
            runtimes[name] = rt
        a, b = runtimes["a"], runtimes["b"]
        me = {a.sender_leases["carrier"].me: "a", b.sender_leases["carrier"].me: "b"}

        async def split() -> bool:
            held = await lease_holders(b.store, role="sender:carrier")
            return len(held) == 4 and sorted(collections.Counter(me[h] for h in held.values()).values()) == [
                2,
                2,
            ]

        await eventually(split, attempts=2000)
        assert sorted(map(len, (await b.health())["senders"]["carrier"].values())) == [2, 2]  # /healthz
        # One batch with both running: each sends its own shards' messages.
        await queue(b.store.redis, "x")
        await until(lambda: sum(len(v) for v in arrived("x").values()) == 48)
        assert by["a"] and by["b"] and not by["a"] & by["b"], by
        # Another batch while a's sends hang; then a stops: b sends what a had in hand.
        gate["a"].clear()
        by["a"], by["b"] = set(), set()
        await queue(b.store.redis, "y")
        await until(lambda: sum(len(v) for v in arrived("y").values()) == 24)  # b's shards
        await a_stack.aclose()
        await until(lambda: sum(len(v) for v in arrived("y").values()) == 48)
        assert by["a"] == set() and by["b"] == set(range(4)), by
    assert len(calls) == 96 and all(n == 1 for n in calls.values()), calls.most_common(3)
    for batch in ("x", "y"):
        for c, texts in arrived(batch).items():
            assert texts == [f"{batch}0", f"{batch}1", f"{batch}2"], (c, texts)
