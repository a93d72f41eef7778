"""The connectors' Lua scripts called directly, through their typed wrappers
(gateways/scripts/*.py), with edge inputs: absent keys and records, entries already
acknowledged, receipts before their sends, bucket edges, TTLs. Each test asserts the exact
effect on Redis and the reply, so two arguments swapped in a wrapper fail it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from engine.core import keys
from engine.core.config import RedisConfig
from engine.core.store import Store
from gateways.scripts import install
from gateways.scripts.binds import BindsArgs, BindsTick
from gateways.scripts.move import MoveArgs, parse_moved
from gateways.scripts.rate import RateArgs, RateReply
from gateways.scripts.receipt import ReceiptArgs, parse_owner
from gateways.scripts.smpp_parts import Part, SmppPartsArgs, parse_rollup
from gateways.scripts.smpp_receipt import SmppReceiptArgs, SmppReceiptFound
from gateways.scripts.status import StatusArgs
from tests.scripts_call import run, text

ANN = "+447700900123"
NOW = 1_700_000_000_000
GROUP = keys.OUTBOUND_GROUP


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    s = Store.connect(redis_url, RedisConfig())
    install(s)
    yield s
    await s.close()


async def record(store: Store, msg_id: str = "m1", **extra: Any) -> None:
    rec = {"id": msg_id, "status": "queued", "history": [["queued", NOW - 100]], **extra}
    await store.redis.hset(keys.message_records(ANN), msg_id, orjson.dumps(rec))


async def read_record(store: Store, msg_id: str = "m1") -> Any:
    raw = await store.redis.hget(keys.message_records(ANN), msg_id)
    return None if raw is None else orjson.loads(raw)


async def pending(store: Store, stream: str) -> bytes:
    """Queue one entry on ``stream`` and read it into the group, as a sender holds it."""
    await store.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    entry = await store.redis.xadd(stream, {"m": "m1"})
    await store.redis.xreadgroup(GROUP, "c1", {stream: ">"})
    return bytes(entry)


# move.lua ------------------------------------------------------------------------------------


def move(entry_id: bytes | str, *rest: str) -> MoveArgs:
    return MoveArgs(
        from_stream=keys.outbound_stream("a"), to_stream=keys.outbound_stream("b"), entry_id=entry_id,
        message_id="m1", contact=ANN, text="Hello", target="b", rest=rest, queued_ms=NOW - 50, now_ms=NOW,
        why="timeout",
    )  # fmt: skip


async def test_move_takes_a_pending_entry_to_the_next_lane_and_notes_it_on_the_record(store: Store) -> None:
    r = store.redis
    entry = await pending(store, keys.outbound_stream("a"))
    await record(store)
    new = parse_moved(await run(store, "move", move(entry, "c", "d")))
    assert new is not None
    assert await r.xlen(keys.outbound_stream("a")) == 0
    assert (await r.xpending(keys.outbound_stream("a"), GROUP))["pending"] == 0
    assert [(i.decode(), text(f)) for i, f in await r.xrange(keys.outbound_stream("b"))] == [
        (new, {"m": "m1", "c": ANN, "t": "Hello", "r": "c,d", "q": str(NOW - 50)})
    ]
    rec = await read_record(store)
    assert rec["gateway"] == "b"
    assert rec["history"] == [["queued", NOW - 100], ["rerouted", NOW, "b: timeout"]]
    assert rec["status"] == "queued"


async def test_move_of_an_entry_already_acknowledged_does_nothing(store: Store) -> None:
    r = store.redis
    entry = await pending(store, keys.outbound_stream("a"))
    await r.xack(keys.outbound_stream("a"), GROUP, entry)
    assert parse_moved(await run(store, "move", move(entry))) is None
    assert await r.xlen(keys.outbound_stream("a")) == 1  # left as it was: not ours to delete
    assert await r.exists(keys.outbound_stream("b")) == 0


async def test_move_without_a_record_still_moves_and_creates_none(store: Store) -> None:
    entry = await pending(store, keys.outbound_stream("a"))
    assert parse_moved(await run(store, "move", move(entry))) is not None
    assert [text(f)["r"] for _, f in await store.redis.xrange(keys.outbound_stream("b"))] == [""]
    assert await store.redis.exists(keys.message_records(ANN)) == 0


# rate.lua ------------------------------------------------------------------------------------

S = 1_000_000  # us


def book(gw: str, now: int, segments: int = 1, give_back: str = "", ahead: int = 30 * S) -> RateArgs:
    """A booking at rate 1 per 10 s (window 1 s, one segment in it), on the test's own clock."""
    return RateArgs(gw, "10000000.000", segments, ahead, S, 1, 0, give_back, now)


async def test_rate_paces_evenly_refuses_beyond_the_horizon_and_takes_a_slot_back(store: Store) -> None:
    t0 = 1_000 * S
    first = RateReply.parse(await run(store, "rate", book("g", t0)))
    assert first.granted and first.slot_us == t0 == first.now_us and first.booking
    # The next one sits a pace later, asked at the same instant; a two-part message after it
    # moves the pace by its own width (its slot is the middle of its two).
    second = RateReply.parse(await run(store, "rate", book("g", t0)))
    assert second.granted and second.slot_us == t0 + 10 * S
    third = RateReply.parse(await run(store, "rate", book("g", t0, segments=2)))
    assert third.granted and third.slot_us == t0 + 25 * S
    # Beyond the horizon: refused, says when it would have been, and books nothing.
    fourth = RateReply.parse(await run(store, "rate", book("g", t0, ahead=30 * S)))
    assert not fourth.granted and fourth.slot_us == t0 + 40 * S and fourth.booking == ""
    # The log keeps the last cap + 1 slots (cap 1 here): the refusal added none.
    assert [m.decode().split(":")[0] for m in await store.redis.zrange(keys.rate("g"), 0, -1)] == [
        str(t0 + 10 * S),
        str(t0 + 25 * S),
    ]
    # The last slot given back (never sent) is free again for the next booking.
    again = RateReply.parse(await run(store, "rate", book("g", t0, give_back=third.booking)))
    assert again.granted and again.slot_us == t0 + 20 * S
    assert [m.decode().split(":")[0] for m in await store.redis.zrange(keys.rate("g"), 0, -1)] == [
        str(t0 + 10 * S),
        str(t0 + 20 * S),
    ]
    # A connector idle for longer than its pace starts again from now: idle time earns no burst.
    later = RateReply.parse(await run(store, "rate", book("g", t0 + 500 * S)))
    assert later.slot_us == t0 + 500 * S
    # Another connector has its own slots.
    assert RateReply.parse(await run(store, "rate", book("h", t0))).slot_us == t0


# receipt.lua ---------------------------------------------------------------------------------

PARKED = keys.parked_receipt("g", 0, "P1")
B_NEW, B_OLD = keys.provider_ids("g", 0, 11), keys.provider_ids("g", 0, 10)


def receipt(error: str = "", ttl: int = 60) -> ReceiptArgs:
    return ReceiptArgs(
        PARKED, keys.legacy_provider_id("g", "P1"), (B_NEW, B_OLD), "P1", "failed", error, NOW, ttl
    )


async def test_a_receipt_is_found_in_the_oldest_bucket_or_the_earlier_release_key(store: Store) -> None:
    await store.redis.hset(B_OLD, "P1", f"{ANN} m1")
    assert parse_owner(await run(store, "receipt", receipt())) == f"{ANN} m1"
    # In two buckets (an id reused by the provider): the newest bucket's message.
    await store.redis.hset(B_NEW, "P1", f"{ANN} m2")
    assert parse_owner(await run(store, "receipt", receipt())) == f"{ANN} m2"
    await store.redis.delete(B_OLD, B_NEW)
    await store.redis.set(keys.legacy_provider_id("g", "P1"), f"{ANN} m0")
    assert parse_owner(await run(store, "receipt", receipt())) == f"{ANN} m0"
    assert await store.redis.exists(PARKED) == 0


async def test_an_unknown_receipt_is_parked_with_its_error_made_safe(store: Store) -> None:
    await store.redis.hset(B_NEW, "P2", f"{ANN} m2")  # another id in the same bucket
    assert parse_owner(await run(store, "receipt", receipt("bad|number", ttl=7))) is None
    assert await store.redis.get(PARKED) == f"failed|bad/number|{NOW}".encode()
    assert await store.redis.ttl(PARKED) == 7


# smpp_parts.lua ------------------------------------------------------------------------------


def parts(*ids: str) -> SmppPartsArgs:
    return SmppPartsArgs(
        keys.smpp_rollup("g", ids[0]),
        tuple(
            Part(i, keys.smpp_segments("g", n, 5), keys.parked_receipt("g", n, i)) for n, i in enumerate(ids)
        ),
        rollup_ttl_s=100,
        segments_ttl_s=200,
    )


async def test_parts_are_mapped_and_a_receipt_parked_for_one_is_rolled_up(store: Store) -> None:
    r = store.redis
    await r.set(keys.parked_receipt("g", 1, "B"), f"failed|bad|{NOW}")
    await r.set(keys.parked_receipt("g", 2, "C"), "garbage")  # not a parked receipt: dropped
    rolled = parse_rollup(await run(store, "smpp_parts", parts("A", "B", "C")))
    assert rolled == {"2": "failed|bad"}
    for n, (i, part) in enumerate([("A", 1), ("B", 2), ("C", 3)]):
        seg = keys.smpp_segments("g", n, 5)
        assert text(await r.hgetall(seg)) == {i: f"A|3|{part}"}
        assert await r.ttl(seg) == 200
        assert await r.exists(keys.parked_receipt("g", n, i)) == 0
    assert await r.ttl(keys.smpp_rollup("g", "A")) == 100


async def test_one_part_with_nothing_parked_rolls_up_nothing(store: Store) -> None:
    assert parse_rollup(await run(store, "smpp_parts", parts("A"))) == {}
    assert text(await store.redis.hgetall(keys.smpp_segments("g", 0, 5))) == {"A": "A|1|1"}
    assert await store.redis.exists(keys.smpp_rollup("g", "A")) == 0  # EXPIRE of nothing creates nothing


# smpp_receipt.lua ----------------------------------------------------------------------------

SEG_NEW, SEG_OLD = keys.smpp_segments("g", 0, 11), keys.smpp_segments("g", 0, 10)


def smpp_receipt(segments: tuple[str, ...] = (SEG_NEW, SEG_OLD), error: str = "") -> SmppReceiptArgs:
    return SmppReceiptArgs(
        parked_key=PARKED, legacy_segment_key=keys.legacy_smpp_segment("g", "p1"),
        legacy_provider_key=keys.legacy_provider_id("g", "p1"), segment_buckets=segments,
        provider_buckets=(B_NEW, B_OLD), field="P1", status="delivered", error=error, now_ms=NOW, park_ttl_s=9,
    )  # fmt: skip


async def test_an_smpp_receipt_names_a_part_before_a_single_message(store: Store) -> None:
    r = store.redis
    await r.hset(B_OLD, "P1", f"{ANN} m1")
    assert SmppReceiptFound.parse(await run(store, "smpp_receipt", smpp_receipt())) == SmppReceiptFound(
        "single", f"{ANN} m1"
    )
    await r.hset(B_NEW, "P1", f"{ANN} m2")  # the newest bucket first
    assert SmppReceiptFound.parse(await run(store, "smpp_receipt", smpp_receipt())) == SmppReceiptFound(
        "single", f"{ANN} m2"
    )
    await r.delete(B_NEW)
    await r.hset(SEG_OLD, "P1", "F|2|2")
    assert SmppReceiptFound.parse(await run(store, "smpp_receipt", smpp_receipt())) == SmppReceiptFound(
        "part", "F|2|2"
    )
    await r.hset(SEG_NEW, "P1", "G|3|1")
    assert SmppReceiptFound.parse(await run(store, "smpp_receipt", smpp_receipt())) == SmppReceiptFound(
        "part", "G|3|1"
    )
    await r.delete(SEG_NEW)
    # With no segment buckets (n = 0) the first bucket given is a provider-id bucket.
    found = SmppReceiptFound.parse(await run(store, "smpp_receipt", smpp_receipt(segments=())))
    assert found == SmppReceiptFound("single", f"{ANN} m1")


async def test_an_smpp_receipt_falls_back_to_earlier_release_keys_then_parks(store: Store) -> None:
    r = store.redis
    await r.set(keys.legacy_provider_id("g", "p1"), f"{ANN} m0")
    assert SmppReceiptFound.parse(await run(store, "smpp_receipt", smpp_receipt())) == SmppReceiptFound(
        "single", f"{ANN} m0"
    )
    await r.set(keys.legacy_smpp_segment("g", "p1"), "F|3|1")
    assert SmppReceiptFound.parse(await run(store, "smpp_receipt", smpp_receipt())) == SmppReceiptFound(
        "part", "F|3|1"
    )
    await r.delete(keys.legacy_provider_id("g", "p1"), keys.legacy_smpp_segment("g", "p1"))
    parked = SmppReceiptFound.parse(await run(store, "smpp_receipt", smpp_receipt(error="x|y")))
    assert parked == SmppReceiptFound("parked", "")
    assert await r.get(PARKED) == f"delivered|x/y|{NOW}".encode()
    assert await r.ttl(PARKED) == 9


# status.lua ----------------------------------------------------------------------------------


def sent(entry_id: bytes | str = "", **extra: Any) -> StatusArgs:
    args: dict[str, Any] = dict(
        contact=ANN, message_id="m1", status="sent", now_ms=NOW, events_max=1000, provider_id="P1",
        provider_field="P1", provider_ids_key=B_NEW, provider_ids_ttl_s=30, parked_key=PARKED,
        stream=keys.outbound_stream("g"), entry_id=entry_id, group=GROUP, gateway="g",
    )  # fmt: skip
    return StatusArgs(**(args | extra))


async def fx(store: Store) -> list[Any]:
    return [orjson.loads(f[b"e"]) for _, f in await store.redis.xrange(keys.flow_events())]


async def test_a_send_is_recorded_acknowledged_and_a_parked_receipt_applied(store: Store) -> None:
    r = store.redis
    entry = await pending(store, keys.outbound_stream("g"))
    await record(store, flow="nps")
    await r.set(PARKED, f"failed|bad number|{NOW + 7}")

    assert await run(store, "status", sent(entry)) == 1

    assert text(await r.hgetall(B_NEW)) == {"P1": f"{ANN} m1"}
    assert await r.ttl(B_NEW) == 30
    assert await r.exists(PARKED) == 0
    assert await r.xlen(keys.outbound_stream("g")) == 0
    rec = await read_record(store)
    assert rec == {
        "id": "m1", "status": "failed", "error": "bad number", "provider_id": "P1", "gateway": "g", "flow": "nps",
        "history": [["queued", NOW - 100], ["sent", NOW], ["failed", NOW + 7]],
    }  # fmt: skip
    assert await fx(store) == [
        {"t": "message", "c": ANN, "f": "nps", "m": "m1", "status": "sent", "at": NOW},
        {
            "t": "message",
            "c": ANN,
            "f": "nps",
            "m": "m1",
            "status": "failed",
            "error": "bad number",
            "at": NOW + 7,
        },
    ]


async def test_a_status_never_moves_back_and_a_repeat_is_not_recorded_twice(store: Store) -> None:
    await record(store)
    receipt_only = dict(
        provider_id="", provider_field="-", provider_ids_key="-", parked_key="-", stream="-", gateway=""
    )
    assert await run(store, "status", sent(**receipt_only, status="delivered")) == 1
    assert await run(store, "status", sent(**receipt_only, status="delivered", now_ms=NOW + 1)) == 1
    assert await run(store, "status", sent(**receipt_only, now_ms=NOW + 2, error="late")) == 1
    rec = await read_record(store)
    assert rec["status"] == "delivered" and "error" not in rec and "gateway" not in rec
    assert rec["history"] == [["queued", NOW - 100], ["delivered", NOW], ["sent", NOW + 2]]
    assert await fx(store) == []  # not a flow's message
    assert await store.redis.exists(B_NEW) == 0


async def test_a_status_of_a_message_gone_from_the_log_still_maps_its_provider_id(store: Store) -> None:
    assert await run(store, "status", sent()) == 0
    assert text(await store.redis.hgetall(B_NEW)) == {"P1": f"{ANN} m1"}
    assert await store.redis.exists(keys.message_records(ANN)) == 0
    # A provider-id TTL of 0 expires the bucket at once.
    assert await run(store, "status", sent(provider_ids_ttl_s=0)) == 0
    assert await store.redis.exists(B_NEW) == 0


# binds.lua -----------------------------------------------------------------------------------


async def binds(
    store: Store, holder: str, mode: Any = "tick", *release: int, n: int = 4, ttl_ms: int = 10_000
) -> Any:
    return await run(store, "binds", BindsArgs("smsc", holder, ttl_ms, n, mode, release))


def tick(share: int, held: set[int], taken: set[int] = set(), surplus: set[int] = set()) -> BindsTick:  # noqa: B006
    return BindsTick(share, frozenset(held), frozenset(taken), frozenset(surplus))


async def test_binds_are_leased_per_index_spread_over_the_processes_and_never_doubled(store: Store) -> None:
    r = store.redis
    assert BindsTick.parse(await binds(store, "a")) == tick(4, {0, 1, 2, 3}, {0, 1, 2, 3})
    leases = text(await r.hgetall(keys.binds("smsc")))
    assert {k: v.split("|")[0] for k, v in leases.items() if not k.startswith("h:")} == dict.fromkeys(
        "0123", "a"
    )
    assert set(leases) == {"0", "1", "2", "3", "h:a"}
    # b joins: nothing is free, so it takes nothing; a is told two are beyond its share.
    assert BindsTick.parse(await binds(store, "b")) == tick(2, set())
    assert BindsTick.parse(await binds(store, "a")) == tick(2, {0, 1, 2, 3}, surplus={2, 3})
    # a closes those binds and releases them; b takes them, a keeps its two.
    assert await binds(store, "a", "release", 2, 3) == []
    assert BindsTick.parse(await binds(store, "b")) == tick(2, {2, 3}, {2, 3})
    assert BindsTick.parse(await binds(store, "a")) == tick(2, {0, 1})
    # Three processes for four binds: the one holding most keeps the remainder; c waits for one.
    assert BindsTick.parse(await binds(store, "c")) == tick(1, set())
    assert BindsTick.parse(await binds(store, "a")) == tick(2, {0, 1})  # a holds 2, ranks first (id)
    assert BindsTick.parse(await binds(store, "b")) == tick(1, {2, 3}, surplus={3})
    await binds(store, "b", "release", 3)
    assert BindsTick.parse(await binds(store, "c")) == tick(1, {3}, {3})
    # A release of an index held by another changes nothing; a leave frees all of its holder's.
    await binds(store, "c", "release", 0)
    assert (await r.hget(keys.binds("smsc"), "0") or b"").startswith(b"a|")
    await binds(store, "a", "leave")
    assert "h:a" not in text(await r.hgetall(keys.binds("smsc")))
    got = BindsTick.parse(await binds(store, "b"))
    assert got.share == 2 and got.held == {0, 2} and got.taken == {0}


async def test_an_expired_bind_lease_is_free_and_a_lowered_count_is_surplus(store: Store) -> None:
    await binds(store, "a", ttl_ms=1)
    await asyncio.sleep(0.01)  # the lease's one millisecond passes on the server's clock
    assert BindsTick.parse(await binds(store, "b")) == tick(4, {0, 1, 2, 3}, {0, 1, 2, 3})
    assert "h:a" not in text(await store.redis.hgetall(keys.binds("smsc")))  # its heartbeat is gone too
    # The carrier now allows 2: indexes 2 and 3 are beyond the count, to be closed and released.
    assert BindsTick.parse(await binds(store, "b", n=2)) == tick(2, {0, 1, 2, 3}, surplus={2, 3})
