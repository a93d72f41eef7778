"""The worker's guarantees: nothing accepted is lost, one contact in order, never twice."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp
import orjson

from engine import intake, keys
from engine.consumer import ensure_group
from engine.events import Event
from engine.redis_embedded import EmbeddedRedis, free_port
from engine.runtime import Runtime
from engine.turn import run_turn
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import ANN, API_KEY, Turns, make_config


def _cfg(redis_url: str, carrier: SimulatedCarrier):  # type: ignore[no-untyped-def]
    return make_config(redis_url, gateways={"carrier": {"type": "http", "url": carrier.url}})


async def _ann_waiting(rt: Runtime) -> None:
    """Ann exists and is waiting at the NPS score question (state written through a real turn)."""
    from engine import contacts

    await contacts.upsert(rt.store, contacts.Contact(ANN, {"first_name": "Ann"}), rt.clock.now_ms())
    (eid,) = await intake.enqueue_starts(rt, "nps", [ANN], {})
    shard = keys.shard_of(ANN, rt.config.engine.shards)
    await run_turn(rt, Event(shard, eid, "start", ANN, rt.clock.now_ms(), flow="nps"))


async def test_texts_accepted_while_no_worker_runs_are_answered_on_start(
    redis_url: str, carrier: SimulatedCarrier
) -> None:
    cfg = _cfg(redis_url, carrier)
    async with Runtime(cfg, worker=False, senders=False, http=False) as rt:
        await _ann_waiting(rt)
        await intake.accept_inbound(rt, gateway="carrier", contact=ANN, to="1", text="10", provider_id="a")
        # A worker read the text and died before acknowledging it: it is pending for that consumer.
        stream = keys.inbound_stream(keys.shard_of(ANN, cfg.engine.shards))
        consumer = f"{socket.gethostname()}-w0"
        await ensure_group(rt.store.redis, stream, keys.INBOUND_GROUP)
        claimed = await rt.store.redis.xreadgroup(keys.INBOUND_GROUP, consumer, {stream: ">"})
        # The start (applied directly above, never acked) and the text are both pending.
        assert len(claimed[0][1]) == 2
        await intake.accept_inbound(rt, gateway="carrier", contact=ANN, to="1", text="Great", provider_id="b")
    async with Runtime(cfg, http=False):
        # The start's greeting was queued before any sender ran, then come the two answers.
        texts = [(await carrier.next_message(ANN)).text for _ in range(3)]
    assert texts[0].startswith("Hi Ann")
    assert texts[1] == "Wonderful, thank you! What do you like most about us?"
    assert texts[2].startswith("Thank you Ann! Your 10/10")
    assert len(carrier.received) == 3


async def test_one_contacts_burst_is_processed_in_order(
    rt: Runtime, carrier: SimulatedCarrier, turns: Turns
) -> None:
    await _ann_waiting(rt)
    await carrier.next_message(ANN)
    ids = []
    for i, text in enumerate(["junk", "more junk", "7", "It was fine"]):
        res = await intake.accept_inbound(
            rt, gateway="carrier", contact=ANN, to="1", text=text, provider_id=str(i)
        )
        ids.append(res.event_id)
    for eid in ids:
        await turns.wait(eid)
    got = [(await carrier.next_message(ANN)).text for _ in range(4)]
    assert got == [
        "Sorry, please reply with a number from 0 to 10.",
        "Sorry, please reply with a number from 0 to 10.",
        "Thanks! What one thing would make it a 10 for you?",
        "Thank you Ann! Your 7/10 and your comments help us get better.",
    ]


async def test_redelivered_event_sends_nothing_twice(redis_url: str, carrier: SimulatedCarrier) -> None:
    async with Runtime(_cfg(redis_url, carrier), worker=False, senders=False, http=False) as rt:
        await _ann_waiting(rt)
        res = await intake.accept_inbound(
            rt, gateway="carrier", contact=ANN, to="1", text="9", provider_id="x"
        )
        ev = Event(
            keys.shard_of(ANN, rt.config.engine.shards),
            res.event_id,
            "in",
            ANN,
            rt.clock.now_ms(),
            text="9",
        )
        first = await run_turn(rt, ev)
        again = await run_turn(rt, ev)
        assert (first.result, again.result) == ("replied", "duplicate")
        assert again.outbound_ids == []
        assert await rt.store.redis.xlen(keys.outbound_stream("carrier")) == 2  # greeting + one reply


async def test_stale_session_version_is_a_conflict_and_writes_nothing(
    redis_url: str, carrier: SimulatedCarrier
) -> None:
    async with Runtime(_cfg(redis_url, carrier), worker=False, senders=False, http=False) as rt:
        await _ann_waiting(rt)
        r = rt.store.redis
        before = await r.hgetall(keys.session(ANN))
        out_before = await r.xlen(keys.outbound_stream("carrier"))
        status, version = await rt.store.run(
            "commit",
            keys=[
                keys.session(ANN),
                keys.message_index(ANN),
                keys.message_records(ANN),
                keys.outbound_stream("carrier"),
            ],
            args=[
                0,
                "0/99999999999999-0",
                orjson.dumps({"n": None}).decode(),
                60,
                200,
                ANN,
                0,
                1,
                "m1",
                "hello",
            ],
        )
        assert (status, int(version)) == (b"conflict", 1)
        assert await r.hgetall(keys.session(ANN)) == before
        assert await r.xlen(keys.outbound_stream("carrier")) == out_before


async def test_engine_rides_out_a_redis_restart(tmp_path: Path, carrier: SimulatedCarrier) -> None:
    server = EmbeddedRedis(tmp_path / "redis", persistent=True, port=free_port())
    server.start()
    try:
        cfg = _cfg(server.url, carrier)
        async with (
            Runtime(cfg) as rt,
            aiohttp.ClientSession(
                f"http://127.0.0.1:{rt.http_port}", headers={"Authorization": f"Bearer {API_KEY}"}
            ) as api,
        ):
            await api.put(f"/v1/contacts/{ANN}", json={"fields": {"first_name": "Ann"}})
            await api.post("/v1/flows/nps/start", json={"contacts": [ANN]})
            await carrier.next_message(ANN)
            await asyncio.to_thread(server.stop)  # SHUTDOWN: the AOF keeps what was accepted
            async with api.get("/healthz") as r:
                assert r.status == 503 and (await r.json())["redis"] == "unreachable"
            async with api.post("/v1/inbound/carrier", json={"from": ANN, "text": "8", "id": "during"}) as r:
                assert r.status == 503 and (await r.json())["error"]["code"] == "unavailable"
            await asyncio.to_thread(server.start)
            async with api.post("/v1/inbound/carrier", json={"from": ANN, "text": "8", "id": "after"}) as r:
                assert r.status == 202
            reply = await carrier.next_message(ANN, timeout=15)
            assert reply.text == "Thanks! What one thing would make it a 10 for you?"
    finally:
        server.stop()
    assert (tmp_path / "redis").exists()
