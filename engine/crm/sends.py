"""Single messages outside a flow (``POST /v1/messages``) and cancelling what is not yet sent
(``DELETE /v1/messages/{id}``, ``DELETE /v1/starts/{id}``).

A single message is accepted by one script in its recipient's shard slot (send.lua: the
idempotency key, an owner record, the hand-over key when it has a validity, and its event, on
the shard's stream now or as a ``d`` timer for a later ``send_at``), then its turn
(engine/conversation/single.py) passes it through the same gate and lanes as every send.

Its id is ``msg-S-<ms>-<hex>``: S is its shard, so its owner record (``p:msg:T:ID``) is found
without an index. Its status: the owner record says ``queued`` or ``scheduled`` until its turn
writes its record in the contact's message log; from then on the record has it (deferred,
queued, sent, delivered, failed, blocked -> ``refused``, cancelled, expired) with its history.

Cancelling races the sender on one key per cancellable unit (``keys.handover``): cancel.lua
marks it cancelled unless claim.lua (the sender, taking it for its rate slot and send) marked it
handed, atomically, so exactly one wins. A journey start is cancelled in two steps: a flag per
shard (``p:sx:T``), which every start event still to be turned sees, then each delivery of the
start found waiting (its timers, its events on the shard streams, its messages in the lanes,
in the order a delivery moves through them, so none slips past) is cancelled by cancel.lua
(a message found in a lane is also taken out of it, so a cancelled campaign does not hold
the lane, or the connector's rate, while the senders discard it); the answer counts those.
A delivery in transit during the scan is still stopped (by the flag, or by the sender's
check) and shows as ``skipped: cancelled`` in ``GET /v1/starts/{id}``.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from redis.asyncio.client import Pipeline

from engine.conversation import events as event_fields
from engine.conversation import outcomes
from engine.conversation.events import Event
from engine.core import keys
from engine.core.scripts.cancel import CancelArgs, parse_outcome
from engine.core.scripts.send import SendArgs, parse_accepted
from engine.crm import journeys

PURPOSES = ("service", "marketing")
LANES = ("reply", "bulk")
#: How long an idempotency key is kept at least (a day; engine.dedupe_window when longer).
IDEMPOTENCY_TTL_S = 86400
#: Rows accepted per round of the batch form (each is its own script call, pipelined).
CHUNK = 500
SCAN_COUNT = 1000


@dataclass(frozen=True)
class SendRequest:
    """One message to send (the API checked its shape; ``to`` is E.164)."""

    to: str
    text: str | None = None
    template: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    gateway: str | None = None
    lane: str = "bulk"
    send_at: datetime | None = None
    validity_s: float | None = None
    purpose: str = "service"
    idempotency_key: str | None = None
    #: The id to give it (:func:`new_id` of its recipient's shard), when the caller had to know
    #: it before (the SMPP server answers each part of a long message with it); else a new one.
    message_id: str | None = None
    #: Submitted by an ESME bound into Parley: what its receipt needs (account ``a``, registered
    #: delivery ``rd``, source, times; gateways/smpp/server_receipts.py). Carried on the message's
    #: record and its ``message`` outcome events.
    smpp: dict[str, Any] | None = None
    #: priority_flag 0..3 for connectors that have one (SMPP); None: the connector's default.
    priority: int | None = None
    #: Delivery receipts wanted (engine/core/sendopts.py RECEIPT_LEVELS); None: the connector's.
    receipts: str | None = None
    #: The source address to send from (an ESME's own); None: the connector's ``sender``. Not
    #: offered to API callers: only the SMPP server sets it, from a source its account allows.
    sender: str | None = None


@dataclass(frozen=True)
class Accepted:
    id: str
    status: str  # queued | scheduled
    repeat: bool = False
    send_at: int | None = None


def new_id(shard: int, now_ms: int) -> str:
    return f"msg-{shard}-{now_ms}-{secrets.token_hex(4)}"


def shard_of_id(message_id: str, shards: int) -> int | None:
    """The shard a single message's id names, or None when it is not one of ours."""
    parts = message_id.split("-")
    if len(parts) != 4 or parts[0] != "msg" or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    shard = int(parts[1])
    return shard if shard < shards else None


def _call(
    rt: journeys.JourneyServices, req: SendRequest, tz: str | None, now: int
) -> tuple[SendArgs, Accepted]:
    shards = rt.config.engine.shards
    shard = keys.shard_of(req.to, shards)
    mid = req.message_id or new_id(shard, now)
    due = journeys.due_ms(rt, req.send_at, req.to, tz) if req.send_at is not None else None
    if due is not None and due <= now:
        due = None
    first = "queued" if due is None else "scheduled"
    message: dict[str, Any] = {"id": mid, "lane": req.lane, "st": first}
    if req.text is not None:
        message["text"] = req.text
    else:
        message["template"] = req.template
        message["fields"] = req.fields
    if req.gateway:
        message["gateway"] = req.gateway
    if req.smpp:
        message["smpp"] = req.smpp
    pending, ttl = "", int(rt.config.engine.message_log_ttl)
    if req.validity_s is not None:
        message["exp"] = (due or now) + int(req.validity_s * 1000)
        pending = f"p|{message['exp']}"
    if due is not None:
        message["sat"] = due
    if req.priority is not None:
        message["pri"] = req.priority
    if req.receipts is not None:
        message["rcpt"] = req.receipts
    if req.sender:
        message["src"] = req.sender
    ev = Event(shard, "", "send", req.to, now, params=message, purpose=req.purpose)
    member = keys.timer_member(req.to, "d", ev.deferred_token())
    wait_s = ((due or now) - now) // 1000
    owner = {"c": req.to, "s": first, "at": now, "due": due, "tm": member}
    if req.smpp:
        owner["smpp"] = req.smpp  # a cancel's event carries it, so the ESME gets its receipt
    fields = event_fields.send_fields(req.to, message, req.purpose, now)
    call = SendArgs(
        shard=shard, message_id=mid, owner_json=orjson.dumps(owner).decode(), owner_ttl_s=ttl + wait_s,
        fields=tuple(x.decode() if isinstance(x, bytes) else x for kv in fields.items() for x in kv),
        due_ms=due, timer_member=member, pending=pending, pending_ttl_s=ttl + wait_s,
        # Scoped to the recipient by a digest of the number: no key name carries a phone number.
        idempotency_key=f"{keys.number_digest(req.to)}:{req.idempotency_key}" if req.idempotency_key else "",
        idempotency_ttl_s=max(IDEMPOTENCY_TTL_S, int(rt.config.engine.dedupe_window)),
    )  # fmt: skip
    return call, Accepted(mid, first, send_at=due)


async def accept(rt: journeys.JourneyServices, reqs: list[SendRequest]) -> list[Accepted]:
    """Accept each message (202 may be said once this returns): one send.lua call each, in its
    recipient's shard slot, pipelined per event-loop pass (and WAITed for with
    ``redis.wait_replicas``). A repeat of an idempotency key answers the first message's id."""
    shards = rt.config.engine.shards
    out: list[Accepted] = []
    for i in range(0, len(reqs), CHUNK):
        chunk = reqs[i : i + CHUNK]
        zoned = [r for r in chunk if r.send_at is not None and r.send_at.tzinfo is None]
        tzs: dict[str, str | None] = {}
        if zoned:
            async with rt.store.redis.pipeline(transaction=False) as pipe:
                for r in zoned:
                    pipe.hget(keys.contact(r.to, keys.shard_of(r.to, shards)), "tz")
                got = await pipe.execute()
            tzs = {r.to: (t.decode() if t else None) for r, t in zip(zoned, got, strict=True)}
        now = rt.clock.now_ms()
        calls = [_call(rt, r, tzs.get(r.to), now) for r in chunk]

        async def one(call: SendArgs, acc: Accepted) -> Accepted:
            async def add(pipe: Pipeline) -> None:
                await rt.store.run("send", keys=call.to_keys(), args=call.to_argv(), client=pipe)

            (raw,) = await rt.store.durable.run(add)
            fresh, value = parse_accepted(raw)
            if fresh:
                return acc
            first = await owner(rt, value)  # the first message's status and time, as it said then
            if first is None:
                return Accepted(value, "queued", repeat=True)
            return Accepted(value, str(first["s"]), repeat=True, send_at=first.get("due"))

        out += await asyncio.gather(*(one(c, a) for c, a in calls))
    return out


async def owner(rt: journeys.JourneyServices, message_id: str) -> dict[str, Any] | None:
    """The owner record of single message ``message_id`` (contact, first status, times), or None."""
    shard = shard_of_id(message_id, rt.config.engine.shards)
    if shard is None:
        return None
    raw = await rt.store.redis.get(keys.single_message(shard, message_id))
    return None if raw is None else dict(orjson.loads(raw))


async def view(rt: journeys.JourneyServices, message_id: str) -> dict[str, Any] | None:
    """What became of single message ``message_id``: its record in the contact's log, or before
    its turn the owner record's status (cancelled when its hand-over says so); None if unknown."""
    own = await owner(rt, message_id)
    if own is None:
        return None
    number = own["c"]
    shard = keys.shard_of(number, rt.config.engine.shards)
    async with rt.store.redis.pipeline(transaction=False) as pipe:
        pipe.hget(keys.message_records(number, shard), message_id)
        pipe.get(keys.handover(shard, message_id))
        raw, held = await pipe.execute()
    if raw is not None:
        rec: dict[str, Any] = orjson.loads(raw)
        rec.setdefault("send_at", own.get("due"))
        return rec
    status = {b"x": "cancelled", b"e": "expired"}.get(held or b"", own["s"])
    history = [[own["s"], own["at"]]]
    if status != own["s"]:
        history.append([status, None])
    return {"id": message_id, "to": number, "status": status, "at": own["at"], "send_at": own.get("due"),
            "history": history, "api": True}  # fmt: skip


async def cancel_message(rt: journeys.JourneyServices, message_id: str) -> tuple[str, dict[str, Any] | None]:
    """Cancel single message ``message_id``: ``cancelled``, ``already`` (cancelled before),
    ``handed`` (a sender has it: too late), ``final`` (it was refused, failed or expired),
    ``expired``, or ``not_found``; and its view after."""
    own = await owner(rt, message_id)
    if own is None:
        return "not_found", None
    number = own["c"]
    shard = keys.shard_of(number, rt.config.engine.shards)
    now = rt.clock.now_ms()
    event = {"t": "message", "c": number, "m": message_id, "status": "cancelled", "at": now}
    if own.get("smpp"):
        event["smpp"] = own["smpp"]  # an ESME's message: its receipt follows this event
    call = CancelArgs(
        shard=shard, unit=message_id, now_ms=now, ttl_s=int(rt.config.engine.message_log_ttl),
        events_max=rt.config.engine.outcome_events_max, event=orjson.dumps(event).decode(),
        contact=number, message_id=message_id, timer_member=own.get("tm", ""),
    )  # fmt: skip
    result = parse_outcome(await rt.store.run("cancel", keys=call.to_keys(), args=call.to_argv()))
    return result, await view(rt, message_id)


@dataclass
class StartCancel:
    """What ``DELETE /v1/starts/{id}`` did: deliveries cancelled here, and those found already
    handed to a gateway (or finished), by where they were found."""

    cancelled: dict[str, int] = field(default_factory=lambda: {"scheduled": 0, "queued": 0, "in_lane": 0})
    too_late: int = 0

    @property
    def total(self) -> int:
        return sum(self.cancelled.values())


async def cancel_start(
    rt: journeys.JourneyServices, start_id: str, flow: str, gateways: list[str]
) -> StartCancel:
    """Cancel every delivery of journey start ``start_id`` not yet handed to a gateway (see the
    module docstring): the flag on every shard first, then, shard by shard, its timers, its
    events on the stream, and its messages in each connector's lanes."""
    r = rt.store.redis
    cfg = rt.config.engine
    now = rt.clock.now_ms()
    out = StartCancel()
    async with r.pipeline(transaction=False) as pipe:
        for s in range(cfg.shards):
            pipe.hset(keys.cancelled_starts(s), start_id, now)
            pipe.expire(keys.cancelled_starts(s), journeys.START_TTL_S)
        pipe.hset(keys.start_record(start_id), "cancelled_at", now)  # GET /v1/starts?status=cancelled
        await pipe.execute()
    marker = f'"id":"{start_id}"'
    ttl = int(cfg.message_log_ttl)

    async def cancel(
        shard: int, number: str, where: str, member: str = "", params: Any = None,
        lane: tuple[str, bytes, str] | None = None,
    ) -> None:  # fmt: skip
        event, stream, entry, mid = "", "", b"", ""
        if member:  # a timer removed here is reported here (nobody else will see it)
            (event,) = outcomes.start_events(number, flow, "skipped_cancelled", params or {}, now)
        if lane is not None:  # taken out of the lane, its record marked: reported here too
            stream, entry, mid = lane
            e = {"t": "message", "c": number, "f": flow, "m": mid, "status": "cancelled", "at": now}
            event = orjson.dumps(e).decode()
        call = CancelArgs(
            shard=shard, unit=keys.start_unit(start_id, number), now_ms=now, ttl_s=ttl,
            events_max=cfg.outcome_events_max, event=event, timer_member=member,
            contact=number if lane else "", message_id=mid, stream=stream, entry_id=entry,
        )  # fmt: skip
        got = parse_outcome(await rt.store.run("cancel", keys=call.to_keys(), args=call.to_argv()))
        if got == "cancelled":
            out.cancelled[where] += 1
        elif got in ("handed", "expired"):
            out.too_late += 1

    for s in range(cfg.shards):
        async for member, _ in r.zscan_iter(keys.timers(s), match=f"*|d|*{marker}*", count=SCAN_COUNT):
            m = member.decode()
            number, _, token = m.split("|", 2)
            d = orjson.loads(token)
            if d.get("k") == "start" and d.get("p", {}).get("_start", {}).get("id") == start_id:
                await cancel(s, number, "scheduled", m, d["p"])
        queued: Any = await r.xrange(keys.inbound_stream(s))
        for _, f in queued:
            number = f.get(b"c", b"").decode()
            if f.get(b"k") == b"start":
                p = orjson.loads(f.get(b"p", b"{}"))
            elif f.get(b"k") == b"timer" and f.get(b"tk") == b"d":
                d = orjson.loads(f.get(b"tt", b"{}"))
                p = d.get("p", {}) if d.get("k") == "start" else {}
            else:
                continue
            if isinstance(p.get("_start"), dict) and p["_start"].get("id") == start_id:
                await cancel(s, number, "queued")
        prefix = keys.handover(s, keys.start_unit(start_id, "")).encode()
        for gw in gateways:
            for lane in keys.LANES:
                stream, start = keys.outbound_stream(s, gw, lane), "-"
                while True:
                    batch: Any = await r.xrange(stream, min=start, count=SCAN_COUNT)
                    for entry_id, f in batch:
                        if f.get(b"u", b"").startswith(prefix):
                            lane_of = (stream, entry_id, f[b"m"].decode())
                            await cancel(s, f[b"c"].decode(), "in_lane", lane=lane_of)
                    if len(batch) < SCAN_COUNT:
                        break
                    start = "(" + batch[-1][0].decode()
    return out
