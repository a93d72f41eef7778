"""The inbox: contacts handed off to a person, and what people do with them.

A contact enters the inbox when a flow reaches a ``handoff:`` node, or (``engine.unmatched:
inbox``) when a text matches no conversation. Its place is the hash ``p:ho:TN`` (status, when,
why, from which flow, who claimed it), indexed per shard in ``p:ib:T`` (number -> handed-off ms);
a listing merges the shards' indexes (no SCAN), oldest first, with a cursor.

Who writes what, so one contact's steps stay in order:

    turn (worker, commit.lua)   opens it, notes each text, applies replies, closes and returns:
                                reply, close and return are events on the contact's inbound shard
                                stream (``kind=inbox``), so they are ordered with the contact's
                                texts, pass the gate in commit.lua like every send, and a crash
                                redelivers them like any event (the commit's dedupe applies once)
    API (inbox_claim.lua)       claims: the one write that answers at once (409 to a second
                                person); it changes nothing a turn decides on

While a contact is in the inbox its texts are logged and counted here, never given to a flow;
keywords still come first (STOP opts out, and the gate then refuses a person's reply too), and
a flow start for it is skipped (``skipped``, reason ``handed_off``). Every step is an outcome
event ``{"t": "inbox", "step": handed_off | text | claimed | replied | closed | returned}``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio.client import Pipeline

from engine.conversation import events
from engine.core import keys
from engine.core.ports import Services
from engine.core.scripts.inbox_claim import InboxClaimArgs
from engine.core.store import Store

#: The reason a text that matched no conversation was handed off (``engine.unmatched: inbox``).
UNMATCHED = "unmatched"
ACTIONS = ("reply", "close", "return")


@dataclass(frozen=True)
class Handoff:
    """A contact's place in the inbox (times in ms)."""

    number: str
    status: str  # open | claimed
    at: int
    reason: str
    flow: str  # the flow it came from ("" for an unmatched text)
    operator: str = ""
    claimed_at: int | None = None
    texts: int = 0
    last_text_at: int | None = None
    last_reply_at: int | None = None

    @classmethod
    def from_hash(cls, number: str, h: dict[bytes, bytes]) -> Handoff | None:
        if not h or b"st" not in h:
            return None

        def s(k: bytes) -> str:
            return h[k].decode() if k in h else ""

        def ms(k: bytes) -> int | None:
            return int(h[k]) if k in h else None

        return cls(
            number, s(b"st"), int(h.get(b"at", 0)), s(b"why"), s(b"f"), s(b"by"), ms(b"ca"),
            int(h.get(b"nt", 0)), ms(b"lt"), ms(b"lr"),
        )  # fmt: skip


def event(number: str, step: str, at: int, **fields: Any) -> str:
    """One inbox outcome event (json) for the shard's outcome stream."""
    return orjson.dumps({"t": "inbox", "c": number, "step": step, **fields, "at": at}).decode()


async def load(store: Store, shards: int, number: str) -> Handoff | None:
    """The contact's place in the inbox, or None when it is not there."""
    raw: Any = await store.redis.hgetall(keys.handoff(number, keys.shard_of(number, shards)))
    return Handoff.from_hash(number, raw)


def encode_cursor(at: int, number: str) -> str:
    return base64.urlsafe_b64encode(f"{at}|{number}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """(handed-off ms, number) after which the next page starts; ValueError if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, number = raw.split("|", 1)
        return int(at), number
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor this server gave") from None


async def page(
    store: Store, shards: int, limit: int, after: tuple[int, str] | None
) -> tuple[list[Handoff], tuple[int, str] | None]:
    """Up to ``limit`` handed-off contacts, oldest first (ties by number), after ``after``; and the
    position to continue from, or None at the end. Two round trips: every shard's index (each
    asked for at most ``limit`` entries past the cursor: the merged page is among them), then the
    page's records."""
    async with store.redis.pipeline(transaction=False) as pipe:
        for s in range(shards):
            if after is None:
                pipe.zrangebyscore(keys.inbox(s), "-inf", "+inf", start=0, num=limit + 1, withscores=True)
            else:
                pipe.zrangebyscore(keys.inbox(s), after[0], after[0], withscores=True)  # ties at the cursor
                pipe.zrangebyscore(
                    keys.inbox(s), f"({after[0]}", "+inf", start=0, num=limit + 1, withscores=True
                )
        replies = await pipe.execute()
    found: list[tuple[int, str]] = []
    for rows in replies:
        found += [(int(score), member.decode()) for member, score in rows]
    merged = sorted(x for x in set(found) if after is None or x > after)
    chosen, more = merged[:limit], len(merged) > limit
    if not chosen:
        return [], None
    async with store.redis.pipeline(transaction=False) as pipe:
        for _, number in chosen:
            pipe.hgetall(keys.handoff(number, keys.shard_of(number, shards)))
        records = await pipe.execute()
    out = [h for (_, n), raw in zip(chosen, records, strict=True) if (h := Handoff.from_hash(n, raw))]
    return out, chosen[-1] if more else None


async def claim(rt: Services, number: str, operator: str) -> tuple[str, str]:
    """Claim the contact for ``operator``: (``ok`` | ``same`` | ``taken`` | ``missing``, holder)."""
    shard = keys.shard_of(number, rt.config.engine.shards)
    now = rt.clock.now_ms()
    call = InboxClaimArgs(
        number, shard, operator, now, event(number, "claimed", now, by=operator),
        rt.config.engine.outcome_events_max,
    )  # fmt: skip
    return InboxClaimArgs.parse(await rt.store.run("inbox_claim", keys=call.to_keys(), args=call.to_argv()))


async def enqueue(
    rt: Services, number: str, action: str, operator: str, *, text: str = "", flow: str = "",
    params: dict[str, Any] | None = None,
) -> str:  # fmt: skip
    """Append a person's ``action`` (reply, close, return) to the contact's shard stream, durably;
    returns its entry id ("ms-seq"). A reply's message id is ``out-S-<entry id>-0``."""
    shard = keys.shard_of(number, rt.config.engine.shards)
    now = rt.clock.now_ms()
    fields = events.inbox_fields(number, action, operator, now, text=text, flow=flow, params=params)

    async def add(pipe: Pipeline) -> None:
        pipe.xadd(keys.inbound_stream(shard), fields)  # type: ignore[arg-type]

    (entry,) = await rt.store.durable.run(add)
    return entry.decode() if isinstance(entry, bytes) else str(entry)


def reply_id(shard: int, entry_id: str) -> str:
    """The message id of the reply an inbox event sends (the turn's first outbound message)."""
    return f"out-{shard}-{entry_id}-0"
