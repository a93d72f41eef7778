"""The worker's guarantees: nothing accepted is lost, one contact in order, never twice."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import aiohttp
import orjson

from engine.app.runtime import Runtime
from engine.conversation import intake
from engine.conversation.events import Event
from engine.conversation.turn import run_turn
from engine.conversation.worker import Worker
from engine.core import keys
from engine.core.consumer import ensure_group
from engine.core.leases import release_dead
from engine.core.redis_embedded import EmbeddedRedis, free_port
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import ANN, API_KEY, Turns, make_config, outbound, process_stream, shard


def _cfg(redis_url: str, carrier: SimulatedCarrier):  # type: ignore[no-untyped-def]
    return make_config(redis_url, gateways={"carrier": {"type": "http", "url": carrier.url}})


async def _ann_waiting(rt: Runtime) -> None:
    """Ann exists and is waiting at the NPS score question (state written through a real turn)."""
    from engine.core import contacts

    await contacts.upsert(
        rt.store, rt.config.engine.shards, contacts.Contact(ANN, {"first_name": "Ann"}), rt.clock.now_ms()
    )
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
        assert len(await outbound(rt, "carrier")) == 2  # greeting + one reply


async def test_stale_session_version_is_a_conflict_and_writes_nothing(
    redis_url: str, carrier: SimulatedCarrier
) -> None:
    async with Runtime(_cfg(redis_url, carrier), worker=False, senders=False, http=False) as rt:
        await _ann_waiting(rt)
        r = rt.store.redis
        before = await r.get(keys.session(ANN, shard(ANN)))
        out_before = await r.xlen(keys.outbound_stream(shard(ANN), "carrier"))
        status, version = await rt.store.run(
            "commit",
            keys=[
                keys.session(ANN, shard(ANN)),
                keys.message_index(ANN, shard(ANN)),
                keys.message_records(ANN, shard(ANN)),
                keys.outbound_stream(shard(ANN), "carrier"),
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
        assert await r.get(keys.session(ANN, shard(ANN))) == before
        assert await r.xlen(keys.outbound_stream(shard(ANN), "carrier")) == out_before


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


async def test_texts_around_a_redis_restart_are_each_answered_once(
    tmp_path: Path, carrier: SimulatedCarrier
) -> None:
    """Redis (AOF on) is restarted while 40 customers are answering: every text the engine
    acknowledged (202) is answered, a text refused with 503 is answered once the provider
    retries it, and no customer gets a second, different reply."""
    server = EmbeddedRedis(tmp_path / "redis", persistent=True, port=free_port())
    server.start()
    numbers = [f"+4477009{i:05d}" for i in range(40)]
    try:
        cfg = _cfg(server.url, carrier)
        async with (
            Runtime(cfg) as rt,
            aiohttp.ClientSession(
                f"http://127.0.0.1:{rt.http_port}", headers={"Authorization": f"Bearer {API_KEY}"}
            ) as api,
        ):
            for n in numbers:
                await api.put(f"/v1/contacts/{n}", json={"fields": {"first_name": "Ann"}})
            await api.post("/v1/flows/nps/start", json={"contacts": numbers})
            for n in numbers:
                await carrier.next_message(n, timeout=10)
            refused = 0

            async def answer(n: str) -> None:
                nonlocal refused
                while True:  # a provider retries until the webhook accepts the text
                    async with api.post(
                        "/v1/inbound/carrier", json={"from": n, "text": "10", "id": f"mo-{n}"}
                    ) as r:
                        if r.status == 202:
                            return
                        if r.status == 200:  # Redis took it, then died before answering: the
                            assert (await r.json())["status"] == "duplicate"  # retry is a repeat
                            return
                        assert r.status == 503, await r.text()
                        refused += 1
                    await asyncio.sleep(0.05)

            async def restart() -> None:
                await asyncio.sleep(0.005)
                await asyncio.to_thread(server.stop)
                await asyncio.sleep(0.3)
                await asyncio.to_thread(server.start)

            await asyncio.gather(restart(), *(answer(n) for n in numbers))
            replies = {n: await carrier.next_message(n, timeout=20) for n in numbers}
            await asyncio.sleep(0.5)  # a second, different reply would arrive by now
        assert refused > 0, "the restart happened after every text was in: nothing was tested"
        for n, msg in replies.items():
            assert msg.text == "Wonderful, thank you! What do you like most about us?", n
        # A reply resent after the restart (sent, but Redis died before it was recorded) carries
        # the same message id, so the provider can drop it; no text was answered twice.
        after_greeting = [m for m in carrier.received if not m.text.startswith("Hi Ann")]
        assert len({m.id for m in after_greeting}) == len(numbers)
    finally:
        server.stop()


async def test_metrics_show_the_backlog_and_dropped_duplicates(
    redis_url: str, carrier: SimulatedCarrier
) -> None:
    from tests.test_processes import _samples

    cfg = _cfg(redis_url, carrier)
    async with (
        Runtime(cfg, worker=False, senders=False) as rt,
        aiohttp.ClientSession(
            f"http://127.0.0.1:{rt.http_port}", headers={"Authorization": f"Bearer {API_KEY}"}
        ) as api,
    ):
        for i, pid in [(0, "a"), (1, "b"), (2, "c"), (2, "c")]:  # the provider sends "c" twice
            body = {"from": f"+44770090010{i}", "text": "hi", "id": pid}
            async with api.post("/v1/inbound/carrier", json=body) as r:
                assert r.status in (200, 202)
        async with api.get("/metrics") as r:
            samples = _samples(await r.text())
    lag = {dict(labels)["shard"]: v for (name, labels), v in samples.items() if name == "parley_stream_lag"}
    assert sum(lag.values()) == 3  # no worker runs: all three texts wait
    assert len(lag) == cfg.engine.shards
    assert samples[("parley_duplicates_dropped_total", (("stage", "inbound"),))] == 1
    assert samples[("parley_workers_live", ())] == 0


async def test_a_waiting_conversation_is_small_and_its_log_expires(
    redis_url: str, carrier: SimulatedCarrier
) -> None:
    async with Runtime(_cfg(redis_url, carrier), worker=False, senders=False, http=False) as rt:
        await _ann_waiting(rt)
        r = rt.store.redis
        # One string, not a hash table (a hash with a long value costs 400+ bytes).
        assert await r.type(keys.session(ANN, shard(ANN))) == b"string"
        assert await r.memory_usage(keys.session(ANN, shard(ANN)), samples=0) <= 200
        ttl = int(rt.config.engine.message_log_ttl)
        for key in (keys.message_index(ANN, shard(ANN)), keys.message_records(ANN, shard(ANN))):
            assert ttl - 5 <= await r.ttl(key) <= ttl
        session_ttl = await r.ttl(keys.session(ANN, shard(ANN)))
        assert 3 * 86400 < session_ttl <= 4 * 86400  # the NPS flow's 3-day expiry, plus a grace day


async def test_a_session_stored_by_an_older_build_is_converted_and_carries_on(
    redis_url: str, carrier: SimulatedCarrier
) -> None:
    from engine.conversation import sessions

    async with Runtime(_cfg(redis_url, carrier), worker=False, senders=False, http=False) as rt:
        await _ann_waiting(rt)
        r = rt.store.redis
        version, last, state = sessions.unpack(await r.get(keys.session(ANN, shard(ANN))))
        await r.delete(keys.session(ANN, shard(ANN)))  # as the hash-format builds stored it
        await r.hset(
            keys.session(ANN, shard(ANN)), mapping={"v": version, "li": last, "d": orjson.dumps(state)}
        )
        await r.expire(keys.session(ANN, shard(ANN)), 3600)
        await intake.accept_inbound(rt, gateway="carrier", contact=ANN, to="1", text="10", provider_id="m")
        # The start (already applied above, still in the stream) is recognised; the answer is taken.
        assert await process_stream(rt, ANN) == ["duplicate", "replied"]
        assert await r.type(keys.session(ANN, shard(ANN))) == b"string"
        assert sessions.unpack(await r.get(keys.session(ANN, shard(ANN))))[0] == version + 1


async def test_a_redis_that_lost_its_script_cache_is_reloaded_and_nothing_runs_twice(
    redis_url: str, carrier: SimulatedCarrier
) -> None:
    """Scripts go out as bare EVALSHA in coalesced pipelines; after SCRIPT FLUSH (what a Redis
    restart does) every request answered NOSCRIPT is run again once the scripts are loaded."""
    async with Runtime(_cfg(redis_url, carrier), worker=False, senders=False, http=False) as rt:
        await _ann_waiting(rt)
        await rt.store.redis.script_flush()
        await intake.accept_inbound(rt, gateway="carrier", contact=ANN, to="1", text="10", provider_id="f")
        await rt.store.redis.script_flush()
        assert await process_stream(rt, ANN) == ["duplicate", "replied"]
        out = await outbound(rt, "carrier")
        assert [f[b"t"].decode() for f in out][-1] == "Wonderful, thank you! What do you like most about us?"
        assert len(out) == 2  # the greeting and one reply: the retried commit did not run twice


async def test_a_dead_workers_released_shards_are_taken_at_once_not_at_the_next_renewal(
    redis_url: str, carrier: SimulatedCarrier
) -> None:
    """The supervisor saw worker A die and gives A's shards up in its name: B renews at once
    (told on p:lease:changed) and holds every shard within moments, although its leases last
    30 s and it would otherwise renew only every 10 s; a replacement joining gets its share
    back as fast."""
    cfg = make_config(
        redis_url,
        engine={"lease_ttl": "30s", "shards": 8},
        gateways={"carrier": {"type": "http", "url": carrier.url}},
    )
    async with Runtime(cfg, worker=False, senders=False, http=False) as rt:
        a, b = Worker(rt, 1), Worker(rt, 2)
        await a.__aenter__()
        await b.__aenter__()
        try:
            await _until_held(b, 4)
            for task in (a._task, a._lease_task, a._watch_task, a._timer_task):  # A is SIGKILLed
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await release_dead(rt.store, a.me, 8, 30.0)
            await _until_held(b, 8)
            assert loop.time() - t0 < 2.0
            c = Worker(rt, 3)  # the replacement
            await c.__aenter__()
            try:
                await _until_held(c, 4)
                await _until_held(b, 4)
                assert loop.time() - t0 < 4.0
            finally:
                await c.__aexit__(None, None, None)
        finally:
            await b.__aexit__(None, None, None)


async def _until_held(w: Worker, n: int) -> None:
    for _ in range(400):
        if len(w.owned) == n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{w.me} reads {sorted(w.owned)}, not {n} shards")
