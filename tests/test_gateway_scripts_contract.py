"""The connectors' Lua scripts called directly, through their typed wrappers
(gateways/scripts/*.py), with edge inputs: absent keys and records, entries already
acknowledged, receipts before their sends, bucket edges, TTLs. Each test asserts the exact
effect on Redis and the reply, so two arguments swapped in a wrapper fail it. And every
script's keys hash to one Redis Cluster slot (the first test)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from redis.crc import key_slot

from engine.core import keys
from engine.core.config import RedisConfig
from engine.core.store import Store
from gateways.scripts import install
from gateways.scripts.binds import BindsArgs, BindsTick
from gateways.scripts.claim import ClaimArgs, parse_verdict
from gateways.scripts.move import MoveArgs, parse_moved
from gateways.scripts.provider_id import ProviderIdArgs, parse_parked
from gateways.scripts.rate import RateArgs, RateReply
from gateways.scripts.receipt import ReceiptArgs, parse_owner
from gateways.scripts.smpp_parts import Part, SmppPartsArgs, parse_rollup
from gateways.scripts.smpp_receipt import SmppReceiptArgs, SmppReceiptFound
from gateways.scripts.smpps_binds import SmppsBindsArgs
from gateways.scripts.smpps_push import SmppsPushArgs
from gateways.scripts.status import StatusArgs
from tests.scripts_call import run, text

ANN = "+447700900123"
SHARD = keys.shard_of(ANN, 8)
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
    await store.redis.hset(keys.message_records(ANN, SHARD), msg_id, orjson.dumps(rec))


async def read_record(store: Store, msg_id: str = "m1") -> Any:
    raw = await store.redis.hget(keys.message_records(ANN, SHARD), msg_id)
    return None if raw is None else orjson.loads(raw)


async def pending(store: Store, stream: str) -> bytes:
    """Queue one entry on ``stream`` and read it into the group, as a sender holds it."""
    await store.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    entry = await store.redis.xadd(stream, {"m": "m1"})
    await store.redis.xreadgroup(GROUP, "c1", {stream: ">"})
    return bytes(entry)


# move.lua ------------------------------------------------------------------------------------


LANE_A, LANE_B = keys.outbound_stream(SHARD, "a"), keys.outbound_stream(SHARD, "b")


def move(entry_id: bytes | str, *rest: str) -> MoveArgs:
    return MoveArgs(
        from_stream=LANE_A, to_stream=LANE_B, entry_id=entry_id,
        message_id="m1", contact=ANN, shard=SHARD, text="Hello", target="b", rest=rest, queued_ms=NOW - 50, now_ms=NOW,
        why="timeout",
    )  # fmt: skip


async def test_move_takes_a_pending_entry_to_the_next_lane_and_notes_it_on_the_record(store: Store) -> None:
    r = store.redis
    entry = await pending(store, LANE_A)
    await record(store)
    new = parse_moved(await run(store, "move", move(entry, "c", "d")))
    assert new is not None
    assert await r.xlen(LANE_A) == 0
    assert (await r.xpending(LANE_A, GROUP))["pending"] == 0
    assert [(i.decode(), text(f)) for i, f in await r.xrange(LANE_B)] == [
        (new, {"m": "m1", "c": ANN, "t": "Hello", "r": "c,d", "q": str(NOW - 50)})
    ]
    rec = await read_record(store)
    assert rec["gateway"] == "b"
    assert rec["history"] == [["queued", NOW - 100], ["rerouted", NOW, "b: timeout"]]
    assert rec["status"] == "queued"


async def test_move_of_an_entry_already_acknowledged_does_nothing(store: Store) -> None:
    r = store.redis
    entry = await pending(store, LANE_A)
    await r.xack(LANE_A, GROUP, entry)
    assert parse_moved(await run(store, "move", move(entry))) is None
    assert await r.xlen(LANE_A) == 1  # left as it was: not ours to delete
    assert await r.exists(LANE_B) == 0


async def test_move_of_a_cancellable_message_names_its_hand_over_in_the_new_entry(store: Store) -> None:
    """Else the next connector's sender would not check it, and could send it cancelled."""
    entry = await pending(store, LANE_A)
    handover = keys.handover(SHARD, "msg-1-2-ab")
    call = MoveArgs(
        from_stream=LANE_A, to_stream=LANE_B, entry_id=entry, message_id="m1", contact=ANN, shard=SHARD,
        text="Hello", target="b", rest=(), queued_ms=NOW - 50, now_ms=NOW, why="timeout", handover=handover,
    )  # fmt: skip
    assert parse_moved(await run(store, "move", call)) is not None
    assert [text(f)["u"] for _, f in await store.redis.xrange(LANE_B)] == [handover]


async def test_move_without_a_record_still_moves_and_creates_none(store: Store) -> None:
    entry = await pending(store, LANE_A)
    assert parse_moved(await run(store, "move", move(entry))) is not None
    assert [text(f)["r"] for _, f in await store.redis.xrange(LANE_B)] == [""]
    assert await store.redis.exists(keys.message_records(ANN, SHARD)) == 0


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


def fast(gw: str, now: int, segments: int = 1, member: str = "", sent: int | None = None) -> RateArgs:
    """Rate 1 a second (window 1 s, one segment in it) with a pace that never binds; ``sent``
    restamps ``member``. Bookings at most 50 ms ahead."""
    return RateArgs(gw, "1000.000", segments, S // 20, S, 1, 0, member, now, sent)


async def test_a_late_send_is_recorded_when_it_went_and_the_window_after_it_moves_with_it(
    store: Store,
) -> None:
    t0 = 1_000 * S
    a = RateReply.parse(await run(store, "rate", fast("g", t0)))
    assert a.granted and a.slot_us == t0
    # It went 300 ms late: recorded then (on time, within the window's reach: not overdue).
    moved = RateReply.parse(
        await run(store, "rate", fast("g", t0 + S // 3, member=a.booking, sent=t0 + S // 3))
    )
    assert moved.granted and not moved.overdue and moved.slot_us == t0 + S // 3
    assert [m.decode().split(":")[0] for m in await store.redis.zrange(keys.rate("g"), 0, -1)] == [
        str(t0 + S // 3)
    ]
    # The next one waits a full window after when it really went, not after its slot.
    b = RateReply.parse(await run(store, "rate", fast("g", t0 + S + S // 3 - S // 40)))
    assert b.granted and b.slot_us == t0 + S + S // 3


async def test_a_restamp_keeps_the_log_in_time_order_and_is_never_before_its_slot_or_after_now(
    store: Store,
) -> None:
    t0 = 1_000 * S

    def call(member: str = "", now: int = t0, sent: int | None = None) -> RateArgs:
        return RateArgs("g", "1000.000", 1, S, 10 * S, 5, 0, member, now, sent)

    b = [RateReply.parse(await run(store, "rate", call())) for _ in range(3)]
    assert [x.slot_us for x in b] == [t0, t0 + 1000, t0 + 2000]
    # The first went at +1.5 ms: it moves between the other two, which count it where it is.
    moved = RateReply.parse(await run(store, "rate", call(b[0].booking, t0 + 5000, t0 + 1500)))
    assert moved.granted and not moved.overdue and moved.slot_us == t0 + 1500
    log = await store.redis.zrange(keys.rate("g"), 0, -1, withscores=True)
    assert [(m.decode(), int(sc)) for m, sc in log] == [
        (b[1].booking, 1),
        (moved.booking, 2),
        (b[2].booking, 3),
    ]
    # A send time read before the slot counts at the slot; one after now (clocks) at now.
    early = RateReply.parse(await run(store, "rate", call(b[1].booking, t0 + 5000, t0 - 7)))
    assert early.slot_us == t0 + 1000
    future = RateReply.parse(await run(store, "rate", call(b[2].booking, t0 + 5000, t0 + 9000)))
    assert future.slot_us == t0 + 5000
    log = await store.redis.zrange(keys.rate("g"), 0, -1, withscores=True)
    assert [(m.decode().split(":")[0], int(sc)) for m, sc in log] == [
        (str(t0 + 1000), 1), (str(t0 + 1500), 2), (str(t0 + 5000), 3)
    ]  # fmt: skip
    # A restamp landing when a booking a window after the slot could already have been made
    # is recorded all the same, and says so.
    late = RateReply.parse(await run(store, "rate", call(moved.booking, t0 + 9 * S + S // 2, t0 + 9 * S)))
    assert late.overdue and late.slot_us == t0 + 9 * S


# receipt.lua ---------------------------------------------------------------------------------

PARKED = keys.parked_receipt("g", 0, "P1")
B_NEW, B_OLD = keys.provider_ids("g", 0, 11), keys.provider_ids("g", 0, 10)


def receipt(error: str = "", ttl: int = 60) -> ReceiptArgs:
    return ReceiptArgs(PARKED, (B_NEW, B_OLD), "P1", "failed", error, NOW, ttl)


async def test_a_receipt_is_found_in_the_newest_bucket_that_has_it(store: Store) -> None:
    await store.redis.hset(B_OLD, "P1", f"{ANN} m1")
    assert parse_owner(await run(store, "receipt", receipt())) == f"{ANN} m1"
    # In two buckets (an id reused by the provider): the newest bucket's message.
    await store.redis.hset(B_NEW, "P1", f"{ANN} m2")
    assert parse_owner(await run(store, "receipt", receipt())) == f"{ANN} m2"
    assert await store.redis.exists(PARKED) == 0


async def test_an_unknown_receipt_is_parked_with_its_error_made_safe(store: Store) -> None:
    await store.redis.hset(B_NEW, "P2", f"{ANN} m2")  # another id in the same bucket
    assert parse_owner(await run(store, "receipt", receipt("bad|number", ttl=7))) is None
    assert await store.redis.get(PARKED) == f"failed|bad/number|{NOW}".encode()
    assert await store.redis.ttl(PARKED) == 7


# smpp_parts.lua ------------------------------------------------------------------------------


def parts(slot: int, numbered: dict[int, str], total: int, rollup: bool, carried: Any = ()) -> SmppPartsArgs:
    """The call for ``slot`` with its parts (number -> id), the first part's id being "A"."""
    return SmppPartsArgs(
        "A", total, keys.smpp_segments("g", slot, 5), 200,
        tuple(Part(n, i, keys.parked_receipt("g", slot, i)) for n, i in numbered.items()),
        keys.smpp_rollup("g", slot, "A") if rollup else "", 100 if rollup else 0, tuple(carried),
    )  # fmt: skip


async def test_parts_are_mapped_per_slot_and_receipts_parked_anywhere_are_rolled_up(store: Store) -> None:
    r = store.redis
    await r.set(keys.parked_receipt("g", 1, "B"), f"failed|bad|{NOW}")
    await r.set(keys.parked_receipt("g", 1, "C"), "garbage")  # not a parked receipt: dropped
    await r.set(keys.parked_receipt("g", 0, "A"), f"delivered||{NOW}")
    # Slot 1 (parts 2 and 3) first: found receipts are returned and left parked.
    found = parse_rollup(await run(store, "smpp_parts", parts(1, {2: "B", 3: "C"}, 3, rollup=False)))
    assert found == {"2": "failed|bad"}
    assert await r.get(keys.parked_receipt("g", 1, "B")) == f"failed|bad|{NOW}".encode()
    assert await r.exists(keys.parked_receipt("g", 1, "C")) == 0
    assert text(await r.hgetall(keys.smpp_segments("g", 1, 5))) == {"B": "A|3|2", "C": "A|3|3"}
    assert await r.ttl(keys.smpp_segments("g", 1, 5)) == 200
    assert await r.exists(keys.smpp_rollup("g", 1, "A")) == 0
    # The first part's slot last, with what the others found: its own parked receipt moves in.
    rolled = parse_rollup(
        await run(store, "smpp_parts", parts(0, {1: "A"}, 3, rollup=True, carried=[(2, "failed|bad")]))
    )
    assert rolled == {"1": "delivered|", "2": "failed|bad"}
    assert text(await r.hgetall(keys.smpp_segments("g", 0, 5))) == {"A": "A|3|1"}
    assert await r.exists(keys.parked_receipt("g", 0, "A")) == 0
    assert await r.ttl(keys.smpp_rollup("g", 0, "A")) == 100


async def test_one_part_with_nothing_parked_rolls_up_nothing(store: Store) -> None:
    assert parse_rollup(await run(store, "smpp_parts", parts(0, {1: "A"}, 1, rollup=True))) == {}
    assert text(await store.redis.hgetall(keys.smpp_segments("g", 0, 5))) == {"A": "A|1|1"}
    assert await store.redis.exists(keys.smpp_rollup("g", 0, "A")) == 0  # EXPIRE of nothing creates nothing


# smpp_receipt.lua ----------------------------------------------------------------------------

SEG_NEW, SEG_OLD = keys.smpp_segments("g", 0, 11), keys.smpp_segments("g", 0, 10)


def smpp_receipt(segments: tuple[str, ...] = (SEG_NEW, SEG_OLD), error: str = "") -> SmppReceiptArgs:
    return SmppReceiptArgs(
        parked_key=PARKED, segment_buckets=segments, provider_buckets=(B_NEW, B_OLD), field="P1",
        status="delivered", error=error, now_ms=NOW, park_ttl_s=9,
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


async def test_an_unknown_smpp_receipt_is_parked(store: Store) -> None:
    r = store.redis
    parked = SmppReceiptFound.parse(await run(store, "smpp_receipt", smpp_receipt(error="x|y")))
    assert parked == SmppReceiptFound("parked", "")
    assert await r.get(PARKED) == f"delivered|x/y|{NOW}".encode()
    assert await r.ttl(PARKED) == 9


# provider_id.lua -----------------------------------------------------------------------------


def mapping(ttl: int = 30) -> ProviderIdArgs:
    return ProviderIdArgs(B_NEW, ttl, PARKED, "P1", ANN, "m1")


async def test_a_provider_id_is_mapped_and_a_parked_receipt_returned_but_left_in_place(store: Store) -> None:
    r = store.redis
    assert parse_parked(await run(store, "provider_id", mapping())) == ""
    assert text(await r.hgetall(B_NEW)) == {"P1": f"{ANN} m1"}
    assert await r.ttl(B_NEW) == 30
    await r.set(PARKED, f"failed|bad number|{NOW + 7}")
    assert parse_parked(await run(store, "provider_id", mapping())) == f"failed|bad number|{NOW + 7}"
    assert await r.exists(PARKED) == 1  # deleted by the caller once applied (gateways/receipts.py)
    # A TTL of 0 expires the bucket at once.
    await run(store, "provider_id", mapping(ttl=0))
    assert await r.exists(B_NEW) == 0


# status.lua ----------------------------------------------------------------------------------

LANE_G = keys.outbound_stream(SHARD, "g")


def sent(entry_id: bytes | str = "", **extra: Any) -> StatusArgs:
    args: dict[str, Any] = dict(
        contact=ANN, shard=SHARD, message_id="m1", status="sent", now_ms=NOW, events_max=1000,
        provider_id="P1", stream=LANE_G, entry_id=entry_id, group=GROUP, gateway="g",
    )  # fmt: skip
    return StatusArgs(**(args | extra))


async def fx(store: Store) -> list[Any]:
    return [orjson.loads(f[b"e"]) for _, f in await store.redis.xrange(keys.flow_events(SHARD))]


async def test_a_send_is_recorded_acknowledged_and_a_parked_receipt_applied(store: Store) -> None:
    r = store.redis
    entry = await pending(store, LANE_G)
    await record(store, flow="nps")

    assert await run(store, "status", sent(entry, parked=f"failed|bad number|{NOW + 7}")) == 1

    assert await r.xlen(LANE_G) == 0
    assert (await r.xpending(LANE_G, GROUP))["pending"] == 0
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
    receipt_only = dict(provider_id="", stream="", gateway="")
    assert await run(store, "status", sent(**receipt_only, status="delivered")) == 1
    assert await run(store, "status", sent(**receipt_only, status="delivered", now_ms=NOW + 1)) == 1
    assert await run(store, "status", sent(**receipt_only, now_ms=NOW + 2, error="late")) == 1
    rec = await read_record(store)
    assert rec["status"] == "delivered" and "error" not in rec and "gateway" not in rec
    assert rec["history"] == [["queued", NOW - 100], ["delivered", NOW], ["sent", NOW + 2]]
    assert await fx(store) == []  # not a flow's message


async def test_a_status_of_a_message_gone_from_the_log_still_acknowledges_its_entry(store: Store) -> None:
    entry = await pending(store, LANE_G)
    assert await run(store, "status", sent(entry)) == 0
    assert await store.redis.xlen(LANE_G) == 0
    assert await store.redis.exists(keys.message_records(ANN, SHARD)) == 0


# sent.lua (single Redis: provider_id.lua + status.lua + the parked DEL in one call) -----------


async def _state(store: Store) -> tuple[Any, ...]:
    r = store.redis
    events = [(f[b"e"]) for _, f in await r.xrange(keys.flow_events(SHARD))]
    return (
        await read_record(store), text(await r.hgetall(B_NEW)), await r.ttl(B_NEW), await r.get(PARKED),
        await r.xlen(LANE_G), (await r.xpending(LANE_G, GROUP))["pending"], events,
    )  # fmt: skip


@pytest.mark.parametrize("receipt_first", [False, True])
@pytest.mark.parametrize("record_there", [True, False])
async def test_sent_lua_leaves_what_the_three_steps_leave(
    store: Store, receipt_first: bool, record_there: bool
) -> None:
    """One call (a single Redis) ends where provider_id.lua, status.lua and the parked receipt's
    DEL end one after the other: the map, the record and its events, the lane acknowledged, the
    parked receipt applied and gone; with the record erased only the map and the lane move."""
    if store.cluster:
        pytest.skip("two slots: a cluster records a send in separate calls")
    results = []
    for one_call in (False, True):
        await store.redis.flushdb()
        entry = await pending(store, LANE_G)
        if record_there:
            await record(store, flow="nps")
        if receipt_first:
            await store.redis.set(PARKED, f"delivered||{NOW + 9}")
        status = sent(entry)
        if one_call:
            answer = await store.run(
                "sent", keys=[*mapping().to_keys(), *status.to_keys()],
                args=[*mapping().to_argv(), *status.to_argv()],
            )  # fmt: skip
        else:
            parked = parse_parked(await run(store, "provider_id", mapping()))
            answer = await run(store, "status", sent(entry, parked=parked))
            if parked:
                await store.redis.delete(PARKED)
        results.append((answer, *await _state(store)))
    assert results[0] == results[1]
    answer, rec, pid_map, _, parked_left, lane_len, lane_pending, _ = results[1]
    assert answer == (1 if record_there else 0)
    assert pid_map == {"P1": f"{ANN} m1"} and parked_left is None and lane_len == lane_pending == 0
    if record_there:
        assert rec["status"] == ("delivered" if receipt_first else "sent")


# One slot each -------------------------------------------------------------------------------


def test_every_gateway_script_names_keys_of_one_cluster_slot() -> None:
    """Redis Cluster runs a script on one slot: each call's KEYS, with representative arguments
    (several contacts, shards, ids and connectors), hash to one slot."""
    from engine.core import idmaps

    buckets = idmaps.plan(86400, 0)
    calls: list[tuple[str, Any]] = []
    for contact in ("+447700900123", "+15550001111", "+4915112345678"):
        for shards in (1, 8, 64):
            shard = keys.shard_of(contact, shards)
            lane = keys.outbound_stream(shard, "a", "bulk")
            calls += [
                ("status", StatusArgs(contact, shard, "m1", "sent", NOW, 10, stream=lane, entry_id="1-0")),
                ("status", StatusArgs(contact, shard, "m1", "delivered", NOW, 10)),
                (
                    "move",
                    MoveArgs(
                        lane,
                        keys.outbound_stream(shard, "b", "bulk"),
                        "1-0",
                        "m1",
                        contact,
                        shard,
                        "hi",
                        "b",
                        ("c",),
                        NOW,
                        NOW,
                        "why",
                    ),
                ),
            ]
    for gw in ("carrier", "smsc"):
        for pid in ("SM" + "a" * 32, "12345", "x" * 200):
            f = idmaps.field(pid)
            k = buckets.slot(f)
            pids = tuple(keys.provider_ids(gw, k, b) for b in buckets.lookback(NOW))
            segs = tuple(keys.smpp_segments(gw, k, b) for b in buckets.lookback(NOW))
            parked = keys.parked_receipt(gw, k, f)
            calls += [
                ("provider_id", ProviderIdArgs(pids[0], 60, parked, f, ANN, "m1")),
                ("receipt", ReceiptArgs(parked, pids, f, "delivered", "", NOW, 60)),
                ("smpp_receipt", SmppReceiptArgs(parked, segs, pids, f, "delivered", "", NOW, 60)),
                (
                    "smpp_parts",
                    SmppPartsArgs(
                        f,
                        2,
                        segs[0],
                        60,
                        (Part(1, f, parked),),
                        keys.smpp_rollup(gw, k, f),
                        60,
                        ((2, "failed|x"),),
                    ),
                ),
                ("smpp_parts", SmppPartsArgs("first", 2, segs[0], 60, (Part(2, f, parked),))),
            ]
        calls.append(("rate", RateArgs(gw, "1000.000", 1, 1, 1, 1, 0, "", 0)))
        for shard in (0, 7, 63):
            held = keys.handover(shard, keys.start_unit("st-1-a", ANN))
            calls.append(("claim", ClaimArgs(held, NOW)))
            calls.append(("move", MoveArgs(keys.outbound_stream(shard, gw, "bulk"), keys.outbound_stream(shard, "b", "bulk"),
                                           "1-0", "m1", ANN, shard, "hi", "b", (), NOW, NOW, "why", handover=held)))  # fmt: skip
        calls.append(("binds", BindsArgs(gw, "host-1", 1000, 2, "tick")))
    for account in ("acme", "x", "A-long_id.15ch"):
        calls.append(("smpps_binds", SmppsBindsArgs(account, "take", "b-1", 2, 1000)))
        calls.append(("smpps_push", SmppsPushArgs(account, "d1", 100, 0, 60, (("k", "r"),))))
    seen = set()
    for name, call in calls:
        slots = {key_slot(k.encode()) for k in call.to_keys()}
        assert len(slots) == 1, (name, call.to_keys())
        seen.add(name)
    from gateways.scripts import SCRIPTS

    assert seen == set(SCRIPTS)


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


# claim.lua -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "now", "verdict", "after"),
    [
        (None, NOW, "ok", "h"),  # nothing yet: handed now
        (f"p|{NOW + 1}", NOW, "ok", "h"),  # pending, still valid
        (f"p|{NOW}", NOW, "expired", "e"),  # its validity ends now: expired, kept so
        ("h", NOW, "ok", "h"),  # a retry, or another message of the same unit
        ("x", NOW, "cancelled", "x"),
        ("e", NOW, "expired", "e"),
    ],
)
async def test_claim_hands_over_unless_cancelled_or_expired(
    store: Store, before: str | None, now: int, verdict: str, after: str
) -> None:
    key = keys.handover(SHARD, "msg-1-2-ab")
    if before is not None:
        await store.redis.set(key, before, ex=500)
    got = parse_verdict(await run(store, "claim", ClaimArgs(key, now, handed_ttl_s=100)))
    assert got == verdict
    assert await store.redis.get(key) == after.encode()
    ttl = await store.redis.ttl(key)
    assert (ttl == 100) if (before, after) in ((None, "h"), (f"p|{NOW + 1}", "h")) else ttl > 100
