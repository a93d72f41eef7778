"""Upgrading a database from key layout 1 (releases before issue 18) with ``parley migrate``.

The layout-1 database is built by hand: a conversation is run on this release, then every key
is written back under the name layout 1 gave it (the contact's number as its hash tag, untagged
shard streams and timers, one outcome stream ``p:fx`` with a webhook's cursor, one calls stream
``p:calls``, one lane per connector ``p:out:GW``, ``p:lease``/``p:workers``). Start must refuse
it naming ``parley migrate``; after the migration a reply continues the same conversation and the
report counts both turns.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from engine.app.migrate import check_layout, migrate, receipt_slots
from engine.app.runtime import Runtime
from engine.conversation import conversations, intake
from engine.core import contacts, keys
from engine.core.config import Config
from engine.core.errors import LayoutError, MigrationRefused
from engine.core.store import Store
from engine.crm import reports
from tests.conftest import ANN, make_config, outbound, process_stream, run_parley

BOB = "+447700900456"
GROUP = "webhook-0-1234abcd"


def _cfg(redis_url: str) -> Config:
    return make_config(redis_url, gateways={"console": {"type": "console"}})


def _layout1_name(key: bytes, tags: dict[str, int]) -> str:
    """The name layout 1 gave the layout-2 key ``key`` (the inverse of the migration)."""
    k = key.decode()
    if m := re.match(r"^p:(c|s|ml|mh|g|cl|sent|att|cv|mo):(\{[^}]*\})(\+\d+)(.*)$", k):
        return f"p:{m[1]}:{{{m[3]}}}{m[4]}"
    if m := re.match(r"^p:(in|tm|fx|calls):(\{[^}]*\})$", k):
        return f"p:{m[1]}" if m[1] in ("fx", "calls") else f"p:{m[1]}:{tags[m[2]]}"
    if m := re.match(r"^p:dd:(\{[^}]*\}):(\d+):(\d+)$", k):
        return f"p:dd:{tags[m[1]]}:{m[2]}:{m[3]}"
    if m := re.match(r"^p:out:\{[^}]*\}:(.*)$", k):
        return f"p:out:{m[1]}"
    return {"p:{l}:lease:worker": "p:lease", "p:{l}:live:worker": "p:workers"}.get(k, k)


async def _as_layout1(r: aioredis.Redis, shards: int) -> None:
    """Rewrite every key of the database under its layout-1 name (streams keep their groups)."""
    tags = {keys.shard_tag(s): s for s in range(shards)}
    for key in [k async for k in r.scan_iter(count=1000)]:
        if key == keys.layout().encode():
            await r.delete(key)
            continue
        old = _layout1_name(key, tags)
        if old == key.decode():
            continue
        if await r.exists(old):  # per-shard streams of one kind fold into one (p:fx, p:calls)
            assert await r.xlen(key) == 0, key
            await r.delete(key)
        else:
            await r.rename(key, old)


async def _layout1_database(redis_url: str) -> dict[str, Any]:
    """A conversation run (Ann asked the NPS question and waits; her reply is queued, unsent),
    rewritten as layout 1, with Bob's extra keys and a webhook part-way through p:fx."""
    async with Runtime(_cfg(redis_url), worker=False, senders=False, http=False) as rt:
        await contacts.upsert(rt.store, rt.config.engine.shards, contacts.Contact(ANN), rt.clock.now_ms())
        await intake.enqueue_starts(rt, "nps", [ANN], {})
        assert await process_stream(rt, ANN) == ["started"]
        question = [f[b"t"].decode() for f in await outbound(rt, "console")]
    r = aioredis.Redis.from_url(redis_url)
    await _as_layout1(r, 4)
    # A webhook that has read the first outcome event and not acknowledged it.
    await r.xgroup_create("p:fx", GROUP, id="0")
    await r.xreadgroup(GROUP, "dispatcher", {"p:fx": ">"}, count=1)
    # Keys of another contact, of every per-contact kind with a suffix; a worker gone long ago.
    await r.hset("p:c:{" + BOB + "}", mapping={"f": "{}", "tg": "[]", "ca": 1, "ua": 1})
    await r.set("p:cv:{" + BOB + "}:order-1", 1, ex=3600)
    await r.hset("p:mo:{" + BOB + "}:smsc:+4470000|7|2", "1", "Hello ")
    await r.hset("p:att:{" + BOB + "}", mapping={"f": "nps", "st": "st-1", "at": 1, "xp": "", "arm": ""})
    await r.zadd("p:workers", {"old-worker": 1})
    await r.hset("p:lease", "0", "old-worker|1")
    await r.zadd("p:slots:console", {"1:1": 1})
    await r.xadd("p:whdead:0", {"id": "1-0", "e": "{}", "error": "500"})
    await r.xadd("p:cl:h:ab12", {"change": "erased", "src": "api"})
    await r.aclose()
    return {"question": question}


async def test_a_layout1_database_is_refused_then_migrated_and_carries_on(redis_url: str) -> None:
    built = await _layout1_database(redis_url)
    cfg = _cfg(redis_url)
    assert built["question"]

    with pytest.raises(LayoutError, match="parley migrate"):
        async with Runtime(cfg, worker=False, senders=False, http=False):
            pass

    store = Store.connect(redis_url, cfg.redis)
    try:
        report = await migrate(store, cfg, receipt_slot=receipt_slots(cfg))
        text = "\n".join(report.lines)
        assert not report.conflicts, text
        assert "contact keys: " in text and "p:layout = 2" in text
        assert await store.redis.get(keys.layout()) == b"2"
        r = store.redis
        s_bob = keys.shard_of(BOB, 4)
        assert await r.exists(keys.contact(BOB, s_bob), keys.attribution(BOB, s_bob)) == 2
        assert await r.exists(keys.conversion_seen(BOB, s_bob, "order-1")) == 1
        assert 0 < await r.ttl(keys.conversion_seen(BOB, s_bob, "order-1")) <= 3600
        assert await r.exists(keys.smpp_mo_parts(BOB, s_bob, "smsc", "+4470000", 7, 2)) == 1
        assert await r.exists("p:lease", "p:workers", "p:fx", "p:calls", "p:out:console") == 0
        assert await r.exists(keys.rate("console"), keys.webhook_dead(0)) == 2
        assert all([await r.exists(keys.erased_consent_ledger("ab12", s)) for s in range(4)])
        assert not [k async for k in r.scan_iter(match="p:c:{+*")]
        # The webhook's cursor and its pending entry moved with p:fx to shard 0's stream.
        pending = await r.xpending(keys.flow_events(0), GROUP)
        assert pending["pending"] == 1
        # ...and it reads the other shards' streams from their start.
        for s in range(1, 4):
            (group,) = await r.xinfo_groups(keys.flow_events(s))
            assert group["name"] == GROUP.encode() and group["last-delivered-id"] == b"0-0"

        # Twice is harmless.
        again = await migrate(store, cfg, receipt_slot=receipt_slots(cfg))
        assert again.lines == ["this database is already key layout 2: nothing to do"]
        await check_layout(store)
    finally:
        await store.close()

    async with Runtime(cfg, worker=False, senders=False, http=False) as rt:
        # The unsent question waits in Ann's shard's lane, as if it had been queued there.
        assert [f[b"t"].decode() for f in await outbound(rt, "console")] == built["question"]
        await intake.accept_inbound(rt, gateway="console", contact=ANN, to="p", text="9", provider_id="m1")
        assert await process_stream(rt, ANN) == ["replied"]
        state = await conversations.load_state(rt.store, rt.config.engine.shards, ANN)
        assert state is not None and state["r"]["nps_score"]["v"] == 9
        folded = await reports.fold(rt.store, rt.config.engine.shards, "nps")
        report = reports.report("nps", folded)
        assert report["runs"]["started"] == 1 and report["response_rate"] == 1.0, report
        (run,) = folded.runs.values()
        assert run.contact == ANN and run.results["nps_score"][0] == 9


async def test_a_new_database_is_marked_and_a_lane_with_pending_sends_is_refused(redis_url: str) -> None:
    cfg = _cfg(redis_url)
    store = Store.connect(redis_url, cfg.redis)
    try:
        await check_layout(store)
        assert await store.redis.get(keys.layout()) == b"2"
        await store.redis.delete(keys.layout())
        # An earlier release's lane with a message a sender read and did not finish.
        r = store.redis
        await r.xadd("p:out:console", {"m": "out-1", "c": ANN, "t": "hi"})
        await r.xgroup_create("p:out:console", keys.OUTBOUND_GROUP, id="0")
        await r.xreadgroup(keys.OUTBOUND_GROUP, "s", {"p:out:console": ">"})
        with pytest.raises(MigrationRefused, match="drain the senders first"):
            await migrate(store, cfg, receipt_slot=receipt_slots(cfg))
        assert await r.exists(keys.layout()) == 0 and await r.xlen("p:out:console") == 1
        with pytest.raises(LayoutError, match="parley migrate"):
            await r.xadd("p:in:0", {"k": "x"})
            await check_layout(store)
        # A live worker of the earlier release: refused too.
        await r.delete("p:out:console")
        await r.zadd("p:workers", {"w": 2**62})
        with pytest.raises(MigrationRefused, match="stop every Parley process"):
            await migrate(store, cfg, receipt_slot=receipt_slots(cfg))
    finally:
        await store.close()


def test_parley_migrate_converts_and_says_so_then_has_nothing_to_do(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        client.hset("p:c:{" + ANN + "}", mapping={"f": "{}", "tg": "[]", "ca": 1, "ua": 1})
        first = run_parley("migrate", env={"PARLEY_REDIS_URL": redis_url})
        assert first.returncode == 0, first.stderr
        assert "contact keys: 1" in first.stdout and "p:layout = 2" in first.stdout
        assert client.exists(keys.contact(ANN, keys.shard_of(ANN, 8))) == 1  # the default 8 shards
        again = run_parley("migrate", env={"PARLEY_REDIS_URL": redis_url})
        assert again.returncode == 0 and "nothing to do" in again.stdout
    finally:
        client.close()


async def test_a_database_of_another_shard_count_is_refused(redis_url: str) -> None:
    cfg = _cfg(redis_url)  # engine.shards: 4
    store = Store.connect(redis_url, cfg.redis)
    try:
        r = store.redis
        for s in range(2):  # an earlier release's workers, with engine.shards: 2
            await r.xgroup_create(f"p:in:{s}", keys.INBOUND_GROUP, id="0", mkstream=True)
        with pytest.raises(MigrationRefused, match=r"engine\.shards = 2"):
            await migrate(store, cfg, receipt_slot=receipt_slots(cfg))
        await r.xgroup_create("p:in:4", keys.INBOUND_GROUP, id="0", mkstream=True)
        with pytest.raises(MigrationRefused, match="p:in:4 is shard 4"):
            await migrate(store, cfg, receipt_slot=receipt_slots(cfg))
        assert await r.exists(keys.layout(), keys.inbound_stream(0)) == 0  # nothing changed
    finally:
        await store.close()
