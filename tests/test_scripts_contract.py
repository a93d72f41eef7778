"""The engine's Lua scripts called directly, through their typed wrappers
(engine/core/scripts/*.py), with edge inputs: absent keys, boundaries, stale leases and
tokens. Each test asserts the exact effect on Redis and the reply, so two arguments swapped in a
wrapper fail it (commit.lua has its own file, tests/test_commit_script.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from engine.core import keys
from engine.core.config import RedisConfig
from engine.core.scripts.cancel import CancelArgs, parse_outcome
from engine.core.scripts.contact import ContactArgs, ContactWritten
from engine.core.scripts.erase import EraseArgs
from engine.core.scripts.fx_page import FxPage, FxPageArgs
from engine.core.scripts.inbox_claim import InboxClaimArgs
from engine.core.scripts.intake import IntakeArgs, IntakeReply
from engine.core.scripts.lease import LeaseArgs, LeaseTick
from engine.core.scripts.send import SendArgs, parse_accepted
from engine.core.scripts.timers import TimersArgs
from engine.core.scripts.webhook_replay import WebhookReplayArgs
from engine.core.store import Store
from tests.scripts_call import run, text

ANN = "+447700900123"
BOB = "+447700900456"
NOW = 1_700_000_000_000
#: The shard the erase and contact calls put ANN in (every key of a call is in its slot).
S = 3


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    s = Store.connect(redis_url, RedisConfig())
    yield s
    await s.close()


# contact.lua ---------------------------------------------------------------------------------


async def test_contact_is_created_then_replaced_whole_keeping_its_created_at(store: Store) -> None:
    first = ContactArgs(ANN, S, NOW, b'{"name":"Ann"}', b'["vip"]', "en", "Europe/London")
    assert ContactWritten.parse(await run(store, "contact", first)) == ContactWritten(True, NOW)
    assert text(await store.redis.hgetall(keys.contact(ANN, S))) == {
        "ca": str(NOW), "ua": str(NOW), "f": '{"name":"Ann"}', "tg": '["vip"]', "l": "en", "tz": "Europe/London",
    }  # fmt: skip

    # A second write replaces fields and tags; "" removes the language; created-at stays.
    again = ContactArgs(ANN, S, NOW + 5, b"{}", b"[]", "", "Europe/Paris")
    assert ContactWritten.parse(await run(store, "contact", again)) == ContactWritten(False, NOW)
    assert text(await store.redis.hgetall(keys.contact(ANN, S))) == {
        "ca": str(NOW), "ua": str(NOW + 5), "f": "{}", "tg": "[]", "tz": "Europe/Paris",
    }  # fmt: skip


async def test_contact_with_neither_language_nor_timezone_has_neither_field(store: Store) -> None:
    await store.redis.hset(
        keys.contact(ANN, S), mapping={"l": "fr", "tz": "Europe/Paris"}
    )  # no ca: a bare hash
    reply = ContactWritten.parse(await run(store, "contact", ContactArgs(ANN, S, 0, "{}", '["a"]')))
    assert reply == ContactWritten(True, 0)  # a timestamp of 0 is kept as is, not taken for "absent"
    assert text(await store.redis.hgetall(keys.contact(ANN, S))) == {
        "ca": "0",
        "ua": "0",
        "f": "{}",
        "tg": '["a"]',
    }


# erase.lua -----------------------------------------------------------------------------------


def erase(number: str = ANN, *members: str, source: str = "api") -> EraseArgs:
    return EraseArgs(number, keys.erased_consent_ledger("d1", S), S, NOW, source, members)


async def test_erasing_a_number_nothing_is_held_for_writes_nothing(store: Store) -> None:
    assert await run(store, "erase", erase()) == 0
    assert await store.redis.exists(keys.erased_consent_ledger("d1", S)) == 0


async def test_erasing_a_number_whose_only_trace_is_a_kept_opt_out_is_a_no_op(store: Store) -> None:
    await store.redis.hset(keys.governance(ANN, S), mapping={"cs": "opted_out", "src": "sms"})
    assert await run(store, "erase", erase()) == 0
    assert text(await store.redis.hgetall(keys.governance(ANN, S))) == {"cs": "opted_out", "src": "sms"}
    assert await store.redis.exists(keys.erased_consent_ledger("d1", S)) == 0


async def test_erase_removes_everything_moves_the_ledger_and_keeps_an_opt_out(store: Store) -> None:
    r = store.redis
    await r.hset(keys.contact(ANN, S), "f", "{}")
    await r.set(keys.session(ANN, S), "s")
    await r.rpush(keys.message_index(ANN, S), "m1")
    await r.hset(keys.message_records(ANN, S), "m1", "{}")
    await r.zadd(keys.counted_sends(ANN, S), {"m1": 1})
    await r.hset(keys.governance(ANN, S), mapping={"cs": "opted_out", "src": "sms"})
    await r.xadd(keys.consent_ledger(ANN, S), {"change": "opted_out", "src": "sms"}, id="5-0")
    mine, other = f"{ANN}|reminder|t1", f"{BOB}|reminder|t2"
    await r.zadd(keys.timers(S), {mine: 1, other: 2})

    assert await run(store, "erase", erase(ANN, mine, source="cli")) == 1

    for k in (keys.contact(ANN, S), keys.session(ANN, S), keys.message_index(ANN, S), keys.message_records(ANN, S),
              keys.counted_sends(ANN, S), keys.consent_ledger(ANN, S)):  # fmt: skip
        assert await r.exists(k) == 0, k
    assert text(await r.hgetall(keys.governance(ANN, S))) == {"cs": "opted_out", "src": "sms"}
    assert await r.zrange(keys.timers(S), 0, -1) == [other.encode()]
    moved = [text(f) for _, f in await r.xrange(keys.erased_consent_ledger("d1", S))]
    assert moved == [
        {"change": "opted_out", "src": "sms", "at": "5"},  # "at" from the entry's id when it had none
        {"change": "erased", "src": "cli", "cause": "contact erased; opt-out kept", "at": str(NOW)},
    ]
    assert await run(store, "erase", erase(ANN, mine)) == 0  # a second erasure finds nothing


async def test_erase_drops_a_consent_status_that_does_not_silence_the_number(store: Store) -> None:
    await store.redis.hset(keys.governance(ANN, S), mapping={"cs": "opted_in", "src": "api"})
    assert await run(store, "erase", erase()) == 1
    assert await store.redis.exists(keys.governance(ANN, S)) == 0
    (_, entry), *_ = await store.redis.xrange(keys.erased_consent_ledger("d1", S))
    assert text(entry) == {"change": "erased", "src": "api", "cause": "contact erased", "at": str(NOW)}


# fx_page.lua ---------------------------------------------------------------------------------


async def test_a_page_of_an_absent_stream_is_empty_and_final(store: Store) -> None:
    page = FxPage.parse(await run(store, "fx_page", FxPageArgs(S, "-", 10)))
    assert page == FxPage("", [])


async def test_pages_filter_in_redis_and_continue_after_the_last_entry_read(store: Store) -> None:
    fx = keys.flow_events(S)
    events = [{"f": "nps", "n": 1}, {"f": "csat", "n": 2}, {"f": "nps", "n": 3}, {"f": "nps", "n": 4}]
    ids = [await store.redis.xadd(fx, {"e": orjson.dumps(e)}, id=f"{i + 1}-0") for i, e in enumerate(events)]
    needle = '"f":"nps"'

    first = FxPage.parse(await run(store, "fx_page", FxPageArgs(S, "-", 2, needle)))
    # Two read (a full page: there may be more), one matched.
    assert first == FxPage("2-0", [(ids[0], orjson.dumps(events[0]))])
    second = FxPage.parse(await run(store, "fx_page", FxPageArgs(S, first.after(), 2, needle)))
    # Exactly a page's worth left: the stream's end is only known from the next, empty page.
    assert second == FxPage("4-0", [(ids[2], orjson.dumps(events[2])), (ids[3], orjson.dumps(events[3]))])
    assert FxPage.parse(await run(store, "fx_page", FxPageArgs(S, second.after(), 2, needle))) == FxPage(
        "", []
    )

    every = FxPage.parse(await run(store, "fx_page", FxPageArgs(S, "(1-0", 5)))
    assert every == FxPage("", [(i, orjson.dumps(e)) for i, e in zip(ids[1:], events[1:], strict=True)])


# intake.lua ----------------------------------------------------------------------------------


def intake(digest: str = "d1", *older: str, ttl_s: int = 60, field: str = "sms:P1:h") -> IntakeArgs:
    return IntakeArgs(
        current_bucket=keys.inbound_dedupe(0, 1, 10), stream=keys.inbound_stream(0),
        digest=digest, ttl_s=ttl_s, field=field,
        entry=("k", "in", "c", ANN), older_buckets=older,
    )  # fmt: skip


async def test_intake_appends_once_then_tells_a_duplicate_from_a_conflict(store: Store) -> None:
    r = store.redis
    ok = IntakeReply.parse(await run(store, "intake", intake()))
    assert ok.status == "ok"
    assert [(i.decode(), text(f)) for i, f in await r.xrange(keys.inbound_stream(0))] == [
        (ok.entry, {"k": "in", "c": ANN})
    ]
    assert text(await r.hgetall(keys.inbound_dedupe(0, 1, 10))) == {"sms:P1:h": f"d1 {ok.entry}"}
    assert await r.ttl(keys.inbound_dedupe(0, 1, 10)) == 60

    assert await run(store, "intake", intake()) == [b"dup", ok.entry.encode()]
    assert await run(store, "intake", intake("d2")) == [b"conflict", ok.entry.encode()]
    assert await r.xlen(keys.inbound_stream(0)) == 1


async def test_intake_finds_a_text_in_an_older_bucket(store: Store) -> None:
    r = store.redis
    older = keys.inbound_dedupe(0, 1, 9)
    await r.hset(older, "sms:P1:h", "d1 1-0")
    assert await run(store, "intake", intake("d1", older)) == [b"dup", b"1-0"]
    await r.hset(older, "sms:P1:h", "d9 2-0")
    assert await run(store, "intake", intake("d1", older)) == [b"conflict", b"2-0"]
    # Another field of the same buckets is another text.
    assert IntakeReply.parse(await run(store, "intake", intake("d1", older, field="sms:P2:h"))).status == "ok"
    assert await r.xlen(keys.inbound_stream(0)) == 1


# lease.lua -----------------------------------------------------------------------------------


async def lease(store: Store, worker: str, mode: Any = "tick", *release: int, ttl_ms: int = 10_000) -> Any:
    return await run(store, "lease", LeaseArgs(worker, ttl_ms, 4, mode, release))


async def test_leases_spread_over_the_workers_and_follow_releases_and_leaves(store: Store) -> None:
    r = store.redis
    assert LeaseTick.parse(await lease(store, "w1")) == LeaseTick(4, frozenset(range(4)), frozenset(range(4)))
    owners = text(await r.hgetall(keys.leases("worker")))
    assert sorted(owners) == ["0", "1", "2", "3"]
    now_ms = int((await r.time())[0]) * 1000
    for value in owners.values():
        who, _, expires = value.partition("|")
        assert who == "w1" and now_ms <= int(expires) <= now_ms + 11_000
    # A second worker's share is half, but nothing is free until w1 gives shards up.
    assert LeaseTick.parse(await lease(store, "w2")) == LeaseTick(2, frozenset(), frozenset())
    assert await r.zcard(keys.live("worker")) == 2

    assert await lease(store, "w1", "release", 0, 1) == []
    assert LeaseTick.parse(await lease(store, "w2")) == LeaseTick(2, frozenset({0, 1}), frozenset({0, 1}))
    # Releasing a shard this worker does not hold changes nothing.
    assert await lease(store, "w1", "release", 0) == []
    assert text(await r.hgetall(keys.leases("worker")))["0"].startswith("w2|")

    assert await lease(store, "w1", "leave") == []
    assert await r.zrange(keys.live("worker"), 0, -1) == [b"w2"]
    assert LeaseTick.parse(await lease(store, "w2")) == LeaseTick(4, frozenset(range(4)), frozenset({2, 3}))


async def test_a_stale_lease_is_taken_and_a_zero_ttl_worker_is_not_counted(store: Store) -> None:
    r = store.redis
    await r.hset(keys.leases("worker"), mapping={"0": "dead|1", "1": "dead|1"})  # expired long ago
    await r.zadd(keys.live("worker"), {"dead": 1})
    got = LeaseTick.parse(await lease(store, "w1"))
    assert got == LeaseTick(4, frozenset(range(4)), frozenset(range(4)))
    assert await r.zrange(keys.live("worker"), 0, -1) == [b"w1"]
    # A heartbeat of length 0 expires at once: the next tick of another worker drops it.
    await lease(store, "w0", ttl_ms=0)
    assert LeaseTick.parse(await lease(store, "w1")).share == 4


# timers.lua ----------------------------------------------------------------------------------


async def test_timers_fire_when_due_inclusive_up_to_the_limit_and_once(store: Store) -> None:
    r = store.redis
    assert await run(store, "timers", TimersArgs(2, NOW)) == 0  # no timers at all
    await r.zadd(
        keys.timers(2), {f"{ANN}|reply|t1": NOW - 1, f"{BOB}|reminder|a|b": NOW, f"{ANN}|x|t3": NOW + 1}
    )

    assert await run(store, "timers", TimersArgs(2, NOW, limit=1)) == 1
    assert await run(store, "timers", TimersArgs(2, NOW, limit=5)) == 1
    assert await run(store, "timers", TimersArgs(2, NOW, limit=5)) == 0
    fired = [text(f) for _, f in await r.xrange(keys.inbound_stream(2))]
    assert fired == [
        {"k": "timer", "c": ANN, "tk": "reply", "tt": "t1", "ts": str(NOW)},
        {"k": "timer", "c": BOB, "tk": "reminder", "tt": "a|b", "ts": str(NOW)},  # due exactly now
    ]
    assert await r.zrange(keys.timers(2), 0, -1) == [f"{ANN}|x|t3".encode()]


# webhook_replay.lua --------------------------------------------------------------------------


async def test_replay_moves_present_letters_once_and_skips_absent_ones(store: Store) -> None:
    r = store.redis
    dead, again = keys.webhook_dead(1), keys.webhook_retry(1)
    await r.xadd(dead, {"id": "1-1", "e": '{"n":1}', "error": "500", "attempts": "3", "at": "1"}, id="10-0")
    await r.xadd(dead, {"error": "broken letter"}, id="11-0")
    await r.xadd(dead, {"id": "1-3", "e": '{"n":3}'}, id="12-0")

    assert await run(store, "webhook_replay", WebhookReplayArgs(1, ())) == 0
    assert await run(store, "webhook_replay", WebhookReplayArgs(1, ("10-0", "11-0", "99-0"))) == 2
    assert [text(f) for _, f in await r.xrange(again)] == [{"id": "1-1", "e": '{"n":1}'}]
    assert [i for i, _ in await r.xrange(dead)] == [b"12-0"]
    # Replaying the same letters again sends nothing twice; another webhook's streams are untouched.
    assert await run(store, "webhook_replay", WebhookReplayArgs(1, ("10-0",))) == 0
    assert await run(store, "webhook_replay", WebhookReplayArgs(2, ("12-0",))) == 0
    assert await r.xlen(dead) == 1 and await r.xlen(again) == 1


# inbox_claim.lua -----------------------------------------------------------------------------


async def test_the_first_claim_wins_and_only_it_writes_an_event(store: Store) -> None:
    def claim(who: str) -> InboxClaimArgs:
        return InboxClaimArgs(ANN, S, who, NOW, orjson.dumps({"t": "inbox", "by": who}).decode())

    assert InboxClaimArgs.parse(await run(store, "inbox_claim", claim("alice"))) == ("missing", "")
    await store.redis.hset(keys.handoff(ANN, S), mapping={"st": "open", "at": NOW})
    assert InboxClaimArgs.parse(await run(store, "inbox_claim", claim("alice"))) == ("ok", "alice")
    assert InboxClaimArgs.parse(await run(store, "inbox_claim", claim("alice"))) == ("same", "alice")
    assert InboxClaimArgs.parse(await run(store, "inbox_claim", claim("bob"))) == ("taken", "alice")
    held = text(await store.redis.hgetall(keys.handoff(ANN, S)))
    assert (held["st"], held["by"], held["ca"]) == ("claimed", "alice", str(NOW))
    events = [orjson.loads(f[b"e"]) for _, f in await store.redis.xrange(keys.flow_events(S))]
    assert events == [{"t": "inbox", "by": "alice"}]


# send.lua ------------------------------------------------------------------------------------


async def test_send_queues_now_or_schedules_and_a_repeated_key_writes_nothing(store: Store) -> None:
    now = SendArgs(S, "msg-3-1-a", '{"c":"x"}', 60, ("k", "send", "c", ANN), pending=f"p|{NOW}",
                   pending_ttl_s=90, idempotency_key=f"{ANN}:k1", idempotency_ttl_s=30)  # fmt: skip
    fresh, entry = parse_accepted(await run(store, "send", now))
    assert fresh and entry
    assert text(dict((await store.redis.xrange(keys.inbound_stream(S)))[0][1])) == {"k": "send", "c": ANN}
    assert await store.redis.get(keys.single_message(S, "msg-3-1-a")) == b'{"c":"x"}'
    assert await store.redis.get(keys.handover(S, "msg-3-1-a")) == f"p|{NOW}".encode()
    assert 0 < await store.redis.ttl(keys.handover(S, "msg-3-1-a")) <= 90
    assert 0 < await store.redis.ttl(keys.send_idempotency(S, f"{ANN}:k1")) <= 30

    again = SendArgs(S, "msg-3-2-b", "{}", 60, ("k", "send"), idempotency_key=f"{ANN}:k1")
    assert parse_accepted(await run(store, "send", again)) == (False, "msg-3-1-a")
    assert await store.redis.xlen(keys.inbound_stream(S)) == 1
    assert not await store.redis.exists(keys.single_message(S, "msg-3-2-b"), keys.handover(S, "msg-3-2-b"))

    later = SendArgs(S, "msg-3-3-c", "{}", 60, due_ms=NOW + 5, timer_member=f"{ANN}|d|tok")
    assert parse_accepted(await run(store, "send", later)) == (True, "")
    assert await store.redis.zscore(keys.timers(S), f"{ANN}|d|tok") == NOW + 5
    assert await store.redis.xlen(keys.inbound_stream(S)) == 1
    assert not await store.redis.exists(keys.handover(S, "msg-3-3-c"))  # no validity: nothing


# cancel.lua ----------------------------------------------------------------------------------


async def _record(store: Store, status: str) -> None:
    rec = {"id": "msg-3-1-a", "status": status, "history": [[status, NOW - 5]]}
    await store.redis.hset(keys.message_records(ANN, S), "msg-3-1-a", orjson.dumps(rec))


def _cancel(**kw: Any) -> CancelArgs:
    return CancelArgs(S, "msg-3-1-a", NOW, 60, 100, event='{"t":"message"}', **kw)


@pytest.mark.parametrize(("held", "answer"), [("h", "handed"), ("x", "already"), ("e", "expired")])
async def test_cancel_refuses_what_is_settled_and_writes_nothing(
    store: Store, held: str, answer: str
) -> None:
    await store.redis.set(keys.handover(S, "msg-3-1-a"), held)
    await store.redis.zadd(keys.timers(S), {f"{ANN}|d|tok": NOW})
    assert parse_outcome(await run(store, "cancel", _cancel(timer_member=f"{ANN}|d|tok"))) == answer
    assert await store.redis.get(keys.handover(S, "msg-3-1-a")) == held.encode()
    assert await store.redis.zcard(keys.timers(S)) == 1
    assert await store.redis.xlen(keys.flow_events(S)) == 0


async def test_cancel_of_a_message_its_turn_finished_unsent_is_final(store: Store) -> None:
    await _record(store, "blocked")
    got = parse_outcome(await run(store, "cancel", _cancel(contact=ANN, message_id="msg-3-1-a")))
    assert got == "final"
    assert not await store.redis.exists(keys.handover(S, "msg-3-1-a"))


async def test_cancel_removes_the_timer_and_reports_it_once(store: Store) -> None:
    await store.redis.zadd(keys.timers(S), {f"{ANN}|d|tok": NOW})
    assert parse_outcome(await run(store, "cancel", _cancel(timer_member=f"{ANN}|d|tok"))) == "cancelled"
    assert await store.redis.get(keys.handover(S, "msg-3-1-a")) == b"x"
    assert 0 < await store.redis.ttl(keys.handover(S, "msg-3-1-a")) <= 60
    assert await store.redis.zcard(keys.timers(S)) == 0
    assert [f[b"e"] for _, f in await store.redis.xrange(keys.flow_events(S))] == [b'{"t":"message"}']


async def test_cancel_marks_a_queued_record_and_reports_it(store: Store) -> None:
    await _record(store, "queued")
    got = parse_outcome(await run(store, "cancel", _cancel(contact=ANN, message_id="msg-3-1-a")))
    assert got == "cancelled"
    rec = orjson.loads(await store.redis.hget(keys.message_records(ANN, S), "msg-3-1-a"))
    assert rec["status"] == "cancelled" and rec["history"] == [["queued", NOW - 5], ["cancelled", NOW]]
    assert await store.redis.xlen(keys.flow_events(S)) == 1


async def test_cancel_of_a_unit_still_on_the_stream_leaves_the_report_to_its_turn(store: Store) -> None:
    got = parse_outcome(await run(store, "cancel", _cancel(contact=ANN, message_id="msg-3-1-a")))
    assert got == "cancelled"
    assert await store.redis.get(keys.handover(S, "msg-3-1-a")) == b"x"
    assert await store.redis.xlen(keys.flow_events(S)) == 0


async def test_cancel_takes_each_message_of_the_unit_out_of_the_lane(store: Store) -> None:
    """A journey delivery of two messages in a lane: the first cancel counts the unit, the second
    (``already``) still takes its message out; a sender that had read them finds nothing pending."""
    lane = keys.outbound_stream(S, "carrier", "bulk")
    await store.redis.xgroup_create(lane, keys.OUTBOUND_GROUP, id="0", mkstream=True)
    unit = keys.start_unit("st-1-a", ANN)
    entries = []
    for mid in ("out-3-1-0-0", "out-3-1-0-1"):
        rec = {"id": mid, "status": "queued", "flow": "promo", "history": [["queued", NOW - 5]]}
        await store.redis.hset(keys.message_records(ANN, S), mid, orjson.dumps(rec))
        entries.append(await store.redis.xadd(lane, {"m": mid, "c": ANN, "u": keys.handover(S, unit)}))
    await store.redis.xreadgroup(keys.OUTBOUND_GROUP, "sender-1", {lane: ">"})  # read ahead
    answers = []
    for mid, entry in zip(("out-3-1-0-0", "out-3-1-0-1"), entries, strict=True):
        call = CancelArgs(S, unit, NOW, 60, 100, event=f'{{"m":"{mid}"}}', contact=ANN, message_id=mid,
                          stream=lane, entry_id=entry)  # fmt: skip
        answers.append(parse_outcome(await run(store, "cancel", call)))
    assert answers == ["cancelled", "already"]
    assert await store.redis.xlen(lane) == 0
    assert (await store.redis.xpending(lane, keys.OUTBOUND_GROUP))["pending"] == 0
    statuses = [
        orjson.loads(v)["status"] for v in (await store.redis.hgetall(keys.message_records(ANN, S))).values()
    ]
    assert statuses == ["cancelled", "cancelled"]
    assert await store.redis.xlen(keys.flow_events(S)) == 2
