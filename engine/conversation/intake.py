"""Accepting work: inbound texts and flow starts become stream entries before anyone is told OK.

This is the durability boundary. A caller (HTTP webhook, SMPP deliver_sm, ``parley chat``) may
acknowledge its peer only after :func:`accept_inbound` returned: by then the text is in Redis
(and in its AOF, fsynced within a second in production).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from redis.asyncio.client import Pipeline

from engine.conversation import events
from engine.core import idmaps, keys
from engine.core.config import EngineConfig
from engine.core.ports import Accepted, Services
from engine.core.scripts.intake import IntakeArgs, IntakeReply


@functools.cache
def dedupe_buckets(window_s: float, rate: float, shards: int) -> idmaps.Buckets:
    """How each shard's inbound dedupe map is cut (engine/core/idmaps.py): ``engine.dedupe_window``,
    sized for ``engine.inbound_rate`` spread over the shards."""
    return idmaps.plan(window_s, rate / shards)


def _digest(contact: str, to: str, text: str) -> str:
    return hashlib.blake2b(f"{contact}\x00{to}\x00{text}".encode(), digest_size=8).hexdigest()


def intake_call(
    cfg: EngineConfig, now: int, *, gateway: str, contact: str, to: str, text: str, provider_id: str
) -> IntakeArgs:
    """The intake.lua call that accepts this text (every key in the contact's shard's slot)."""
    shard = keys.shard_of(contact, cfg.shards)
    b = dedupe_buckets(cfg.dedupe_window, cfg.inbound_rate, cfg.shards)
    field = idmaps.field(keys.inbound_dedupe_field(contact, gateway, provider_id))
    slot = b.slot(field)
    current, *older = [keys.inbound_dedupe(shard, slot, n) for n in b.lookback(now)]
    return IntakeArgs(
        current_bucket=current,
        stream=keys.inbound_stream(shard),
        digest=_digest(contact, to, text),
        ttl_s=b.ttl_s(now),
        field=field,
        entry=tuple(events.inbound_fields(contact, gateway, to, text, provider_id, now)),
        older_buckets=tuple(older),
    )


async def accept_inbound(
    rt: Services, *, gateway: str, contact: str, to: str, text: str, provider_id: str
) -> Accepted:
    """Append an inbound text to its contact's shard stream, once per (gateway, provider id)."""
    call = intake_call(
        rt.config.engine, rt.clock.now_ms(), gateway=gateway, contact=contact, to=to, text=text,
        provider_id=provider_id,
    )  # fmt: skip

    async def add(pipe: Pipeline) -> None:
        await rt.store.run("intake", keys=call.to_keys(), args=call.to_argv(), client=pipe)

    # Coalesced with the other webhooks being answered in the same pass: one round trip.
    (raw,) = await rt.store.coalescer.run(add)
    reply = IntakeReply.parse(raw)
    result = {"ok": "accepted", "dup": "duplicate", "conflict": "conflict"}[reply.status]
    rt.metrics.inbound(gateway, result)
    return Accepted(result, reply.entry)


async def enqueue_starts(
    rt: Services, flow: str, contacts: list[str], params: dict[str, Any], *, interrupt: bool = False
) -> list[str]:
    """Append a start event per contact now; returns the stream entry ids."""
    return await queue_starts(rt, flow, [(c, params, None) for c in contacts], interrupt)


async def queue_starts(
    rt: Services, flow: str, starts: list[tuple[str, dict[str, Any], int | None]], interrupt: bool
) -> list[str]:
    """Queue each (contact, params, due ms or None) start: now on its shard's stream, or later as
    a ``d`` timer carrying the start event (fired onto the stream when due, so it is ordered with
    the contact's texts). Pipelined, 1,000 per round trip. Each start's stream entry id ("" when
    it waits as a timer)."""
    now = rt.clock.now_ms()
    ids: list[str] = []
    for i in range(0, len(starts), 1000):
        async with rt.store.redis.pipeline(transaction=False) as pipe:
            for number, p, due in starts[i : i + 1000]:
                shard = keys.shard_of(number, rt.config.engine.shards)
                if due is None or due <= now:
                    fields: Any = events.start_fields(number, flow, p, interrupt, now)
                    pipe.xadd(keys.inbound_stream(shard), fields)
                else:
                    ev = events.Event(
                        shard, "", "start", number, now, flow=flow, params=p, interrupt=interrupt
                    )
                    pipe.zadd(keys.timers(shard), {keys.timer_member(number, "d", ev.deferred_token()): due})
            ids += [r.decode() if isinstance(r, bytes) else "" for r in await pipe.execute()]
    return ids
