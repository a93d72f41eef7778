"""commit.lua called directly, through its typed wrapper (engine/core/scripts/commit.py), with
edge inputs: the version CAS, redeliveries, the contact CAS, the gate and the caps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from engine.core import keys
from engine.core.config import RedisConfig
from engine.core.scripts.commit import CommitArgs, ContactChange, Outbound
from engine.core.store import Store

ANN = "+447700900123"
#: The shard the turns commit in (every key of a commit is in its slot).
S = 0
NOW = 1_700_000_000_000


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    s = Store.connect(redis_url, RedisConfig())
    yield s
    await s.close()


def reply(n: int, kind: str = "r", text: str = "Thanks!") -> tuple[tuple[str, str], Outbound]:
    mid = f"out-{n}"
    rec = {"id": mid, "dir": "out", "text": text, "to": ANN, "status": "queued", "flow": "nps"}
    return (mid, orjson.dumps(rec).decode()), Outbound(mid, text, kind)


def turn(version: int, event: str, *messages: tuple[tuple[str, str], Outbound], **extra: Any) -> CommitArgs:
    return CommitArgs(
        version=version, event=event, contact=ANN, shard=S, outbound_stream=keys.outbound_stream(S, "sms"),
        state='{"f":"nps"}', ttl_s=60, now_ms=NOW, records=[m[0] for m in messages],
        outbound=[m[1] for m in messages], **extra,
    )  # fmt: skip


async def commit(store: Store, args: CommitArgs) -> list[str]:
    res = await store.run("commit", keys=args.to_keys(), args=args.to_argv())
    return [x.decode() if isinstance(x, bytes) else str(x) for x in res]


async def queued(store: Store) -> list[str]:
    return [f[b"m"].decode() for _, f in await store.redis.xrange(keys.outbound_stream(S, "sms"))]


@dataclass
class Case:
    label: str
    first: CommitArgs
    then: CommitArgs
    expected: list[str]
    queued: list[str] = field(default_factory=list)


CASES = [
    Case(
        "the next version commits",
        turn(0, "0/1-0", reply(1)),
        turn(1, "0/2-0", reply(2)),
        ["ok", "2"],
        ["out-1", "out-2"],
    ),
    Case(
        "a redelivered event commits nothing",
        turn(0, "0/5-0", reply(1)),
        turn(1, "0/5-0", reply(2)),
        ["dup", "1"],
        ["out-1"],
    ),
    Case(
        "an event older than the applied one on its shard is a redelivery",
        turn(0, "0/5-3", reply(1)),
        turn(1, "0/5-2", reply(2)),
        ["dup", "1"],
        ["out-1"],
    ),
    Case(
        "an older id from another shard is not a redelivery",
        turn(0, "0/5-3", reply(1)),
        turn(1, "1/4-0", reply(2)),
        ["ok", "2"],
        ["out-1", "out-2"],
    ),
    Case(
        "a stale version is a conflict",
        turn(0, "0/1-0", reply(1)),
        turn(0, "0/2-0", reply(2)),
        ["conflict", "1"],
        ["out-1"],
    ),
    Case(
        "a contact changed since it was loaded is a conflict",
        turn(0, "0/1-0", reply(1)),
        turn(1, "0/2-0", reply(2), contact_change=ContactChange(123, "{}", "[]", NOW)),
        ["conflict", "1"],
        ["out-1"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
async def test_the_session_version_and_the_applied_event_decide_what_commits(
    store: Store, case: Case
) -> None:
    assert await commit(store, case.first) == ["ok", "1"]
    assert await commit(store, case.then) == case.expected
    assert await queued(store) == case.queued


async def test_an_opted_out_contact_gets_system_messages_only_and_the_reply_is_recorded_blocked(
    store: Store,
) -> None:
    args = turn(
        0, "0/1-0", reply(1, "s", "You are unsubscribed."), reply(2, "r"), consent="opted_out|sms|STOP"
    )
    assert await commit(store, args) == ["ok", "1", "out-2 opted_out"]
    assert await queued(store) == ["out-1"]
    rec = orjson.loads(await store.redis.hget(keys.message_records(ANN, S), "out-2"))
    assert (rec["status"], rec["error"]) == ("blocked", "opted out")


async def test_a_full_cap_blocks_business_messages_but_not_replies(store: Store) -> None:
    caps = "1:86400000:one a day"
    assert await commit(store, turn(0, "0/1-0", reply(1, "c"), caps=caps)) == ["ok", "1"]
    assert await commit(store, turn(1, "0/2-0", reply(2, "c"), reply(3, "r"), caps=caps)) == [
        "ok",
        "2",
        "out-2 capped",
    ]
    assert await queued(store) == ["out-1", "out-3"]


async def test_an_empty_state_keeps_the_stored_one_and_the_contact_change_is_written(store: Store) -> None:
    assert await commit(store, turn(0, "0/1-0")) == ["ok", "1"]
    change = ContactChange(0, '{"plan": "gold"}', '["vip"]', NOW)
    args = turn(1, "0/2-0", contact_change=change)
    args.state = ""
    assert await commit(store, args) == ["ok", "2"]
    assert await store.redis.get(keys.session(ANN, S)) == b'2|0/2-0|{"f":"nps"}'
    assert await store.redis.hmget(keys.contact(ANN, S), "f", "tg", "ua") == [
        b'{"plan": "gold"}',
        b'["vip"]',
        str(NOW).encode(),
    ]


async def test_the_commit_acknowledges_and_deletes_the_entry_it_applied(store: Store) -> None:
    """With ``ack_group`` the turn's own commit acknowledges its inbound entry (the worker has
    no acknowledgement round trip of its own): applied entries leave the group's pending list
    and the stream, a redelivery ("dup") is acknowledged too, a lost race ("conflict") is not,
    and an entry the group never read is left in the stream for it."""
    r, stream, group = store.redis, keys.inbound_stream(S), keys.INBOUND_GROUP
    await r.xgroup_create(stream, group, id="0", mkstream=True)
    first = (await r.xadd(stream, {"k": "in"})).decode()
    second = (await r.xadd(stream, {"k": "in"})).decode()
    await r.xreadgroup(group, "w0", {stream: ">"}, count=2)
    unread = (await r.xadd(stream, {"k": "in"})).decode()

    assert (await commit(store, turn(0, f"{S}/{first}", reply(1), ack_group=group)))[0] == "ok"
    assert (await commit(store, turn(0, f"{S}/{second}", reply(2), ack_group=group)))[0] == "conflict"
    pending = [p["message_id"].decode() for p in await r.xpending_range(stream, group, "-", "+", 10)]
    assert pending == [second]  # the lost race stays pending, to be decided again
    assert [e[0].decode() for e in await r.xrange(stream)] == [second, unread]

    assert (await commit(store, turn(1, f"{S}/{first}", reply(3), ack_group=group)))[0] == "dup"
    assert (await commit(store, turn(1, f"{S}/{second}", reply(2), ack_group=group)))[0] == "ok"
    assert await r.xpending_range(stream, group, "-", "+", 10) == []
    assert (await commit(store, turn(2, f"{S}/{unread}", reply(4), ack_group=group)))[0] == "ok"
    assert [e[0].decode() for e in await r.xrange(stream)] == [unread]  # never read by the group: kept
    assert await queued(store) == ["out-1", "out-2", "out-4"]


async def test_the_inbox_change_opens_notes_texts_and_replies_and_closes(store: Store) -> None:
    """The inbox change after the outcome events: open (reason, flow), text, reply (operator),
    close; none at all leaves the inbox as it is; a redelivered event changes nothing."""
    place, index = keys.handoff(ANN, S), keys.inbox(S)
    assert await commit(store, turn(0, "0/1-0", inbox=("open", "needs_person", "support"))) == ["ok", "1"]
    held = await store.redis.hgetall(place)
    assert (held[b"st"], held[b"why"], held[b"f"], held[b"at"], held[b"nt"]) == (
        b"open", b"needs_person", b"support", str(NOW).encode(), b"0",
    )  # fmt: skip
    assert await store.redis.zscore(index, ANN) == NOW
    assert await commit(store, turn(1, "0/2-0", inbox=("text",))) == ["ok", "2"]
    assert await commit(store, turn(2, "0/2-0", inbox=("text",))) == ["dup", "2"]
    assert await commit(store, turn(2, "0/3-0", reply(1), inbox=("reply", "alice"))) == ["ok", "3"]
    assert await commit(store, turn(3, "0/4-0")) == ["ok", "4"]  # no change given
    held = await store.redis.hgetall(place)
    assert (held[b"nt"], held[b"lt"], held[b"rb"]) == (b"1", str(NOW).encode(), b"alice")
    assert await queued(store) == ["out-1"]
    assert await commit(store, turn(4, "0/5-0", inbox=("close",))) == ["ok", "5"]
    assert not await store.redis.exists(place) and await store.redis.zscore(index, ANN) is None


async def test_a_cancellable_turns_messages_name_its_hand_over_and_others_do_not(store: Store) -> None:
    """KEYS[16]: each lane entry of a cancellable unit says where the sender checks it (u); a
    blocked single message (no flow, ``api``) still gets its outcome event."""
    held = keys.handover(S, keys.start_unit("st-1-a", ANN))
    assert (await commit(store, turn(0, "0/1-0", reply(1), reply(2), handover=held)))[0] == "ok"
    assert (await commit(store, turn(1, "0/2-0", reply(3))))[0] == "ok"
    lane = await store.redis.xrange(keys.outbound_stream(S, "sms"))
    assert [(f[b"m"], f.get(b"u")) for _, f in lane] == [
        (b"out-1", held.encode()), (b"out-2", held.encode()), (b"out-3", None),
    ]  # fmt: skip

    await store.redis.hset(keys.governance(ANN, S), "sup", "deceased")
    rec = {
        "id": "msg-0-1-a",
        "dir": "out",
        "text": "hi",
        "to": ANN,
        "status": "queued",
        "flow": None,
        "api": True,
    }
    single = (("msg-0-1-a", orjson.dumps(rec).decode()), Outbound("msg-0-1-a", "hi", "c"))
    got = await commit(store, turn(2, "0/3-0", single, handover=keys.handover(S, "msg-0-1-a")))
    assert got == ["ok", "3", "msg-0-1-a suppressed"]
    (event,) = [orjson.loads(f[b"e"]) for _, f in await store.redis.xrange(keys.flow_events(S))]
    assert event["m"] == "msg-0-1-a" and event["status"] == "blocked" and event["error"] == "suppressed"
