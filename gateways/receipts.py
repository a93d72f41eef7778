"""Delivery receipts: from a provider's id back to our message, whatever order things arrive in.

Two slots are involved, and no script touches both (Redis Cluster runs a script on one slot):
the contact's shard slot ``T`` (its message record, the outbound lane, the shard's outcome
events: status.lua) and the connector's slot ``{GW:K}`` of the provider id (the provider-id map,
the parked receipts: provider_id.lua, receipt.lua, smpp_receipt.lua). A send is recorded in
this order (:func:`record_send`):

    1. provider_id.lua  {GW:K}  map pid -> "N message-id"; read a receipt parked under pid
    2. status.lua       T       record "sent" (+ the parked receipt, if 1 found one), XACK the lane
    3. DEL parked       {GW:K}  only when 1 found one

A receipt (receipt.lua / smpp_receipt.lua, in ``{GW:K}``) looks in the map first and parks only
when the id is not there, atomically; when found, a status.lua call records it on the message.
The timeline of the race, and what a crash at each point leaves:

    receipt before 1   parked; 1 returns it, 2 applies it after "sent"            nothing lost
    receipt after 1    found in the map, recorded by its own status.lua call, before or after
                       2 (a status never moves back: "sent" after "delivered" stays history)
    crash before 1     nothing written; the lane entry stays pending and is sent again with
                       the same message id (at-least-once, as for any crash mid-send)
    crash after 1      the map is written, the record not; the entry stays pending and is read
                       again (``unsure``: asked of the provider first where it can be); a receipt
                       meanwhile finds the map and is recorded; a parked one stays parked and
                       is found again by the next 1
    crash after 2      the record has the receipt; the parked copy expires (PARK_TTL_S) unread

The other order (record first) could acknowledge the send and then lose the map: every receipt
for it would be parked and never applied. Writing the map first costs at most a repeated send,
which at-least-once already allows.

On a single Redis (not a cluster) the three steps are one call, sent.lua, which runs
provider_id.lua and status.lua as functions and deletes the parked receipt, atomically: the
crash rows above then have nothing between them. The order stays the same.
"""

from __future__ import annotations

from redis.asyncio.client import Pipeline

from engine.core import idmaps, keys
from gateways.base import Host, Receipt, SendPolicy
from gateways.scripts.provider_id import ProviderIdArgs, parse_parked
from gateways.scripts.receipt import ReceiptArgs, parse_owner
from gateways.scripts.status import StatusArgs

#: How long a receipt waits for its send to be recorded before it is dropped.
PARK_TTL_S = 86400
#: Buckets of connectors that are no longer configured (their receipts still resolve).
DEFAULT_BUCKETS = idmaps.plan(SendPolicy().receipt_window, 0)


def shard_of(rt: Host, contact: str) -> int:
    """The contact's shard, by the shard count the host's configuration says."""
    return keys.shard_of(contact, rt.config.engine.shards)


def buckets_of(rt: Host, gateway: str) -> idmaps.Buckets:
    """How ``gateway``'s provider-id map is cut (engine/core/idmaps.py)."""
    gw = rt.gateways.get(gateway)
    return gw.receipt_buckets if gw is not None else DEFAULT_BUCKETS


def lookup_keys(rt: Host, gateway: str, field: str, kind: str = "pid") -> list[str]:
    """The buckets of ``gateway``'s ``pid`` (provider ids) or ``seg`` (SMPP segments) map that
    ``field`` may be in, newest first, over the receipt window."""
    b = buckets_of(rt, gateway)
    slot = b.slot(field)
    build = keys.provider_ids if kind == "pid" else keys.smpp_segments
    return [build(gateway, slot, n) for n in b.lookback(rt.clock.now_ms())]


def parked_key(rt: Host, gateway: str, pid: str) -> str:
    """Where a receipt for provider id ``pid`` (or its field: the same) of ``gateway`` is parked."""
    field = idmaps.field(pid)
    return keys.parked_receipt(gateway, buckets_of(rt, gateway).slot(field), field)


def provider_id_call(rt: Host, gateway: str, msg_id: str, contact: str, pid: str) -> ProviderIdArgs:
    """The provider_id.lua call mapping ``pid`` to message ``msg_id`` of ``contact`` (step 1)."""
    now = rt.clock.now_ms()
    b = buckets_of(rt, gateway)
    field = idmaps.field(pid)
    slot = b.slot(field)
    return ProviderIdArgs(
        provider_ids_key=keys.provider_ids(gateway, slot, b.bucket(now)), provider_ids_ttl_s=b.ttl_s(now),
        parked_key=keys.parked_receipt(gateway, slot, field), field=field, contact=contact, message_id=msg_id,
    )  # fmt: skip


def status_call(
    rt: Host,
    gateway: str,
    msg_id: str,
    contact: str,
    status: str,
    pid: str,
    error: str,
    *,
    stream: str = "",
    entry_id: str | bytes = "",
    record_gateway: bool = False,
    parked: str = "",
) -> StatusArgs:
    """The status.lua call recording a send's outcome (step 2): the message's new status, its
    provider id (when there is one), a receipt that came first (``parked``, as step 1 found it),
    the outbound entry acknowledged, and with ``record_gateway`` the connector that sent it."""
    return StatusArgs(
        contact=contact, shard=shard_of(rt, contact), message_id=msg_id, status=status,
        now_ms=rt.clock.now_ms(), events_max=rt.config.engine.outcome_events_max, error=error,
        provider_id=pid, stream=stream, entry_id=entry_id, group=keys.OUTBOUND_GROUP if entry_id else "",
        gateway=gateway if record_gateway else "", parked=parked,
    )  # fmt: skip


async def record_send(
    rt: Host,
    gateway: str,
    msg_id: str,
    contact: str,
    status: str,
    pid: str,
    error: str,
    *,
    stream: str = "",
    entry_id: str | bytes = "",
    record_gateway: bool = False,
) -> None:
    """Record a send's outcome in the order the module docstring gives (each step through the
    coalescer; an error leaves the later steps undone, so the caller retries the whole)."""
    parked = ""
    if pid and not rt.store.cluster:  # one server: steps 1-3 in one call (sent.lua), atomically
        mapping = provider_id_call(rt, gateway, msg_id, contact, pid)
        call = status_call(
            rt, gateway, msg_id, contact, status, pid, error, stream=stream, entry_id=entry_id,
            record_gateway=record_gateway,
        )  # fmt: skip

        both_keys, both_args = [*mapping.to_keys(), *call.to_keys()], [*mapping.to_argv(), *call.to_argv()]

        async def both(pipe: Pipeline) -> None:
            await rt.store.run("sent", keys=both_keys, args=both_args, client=pipe)

        await rt.store.coalescer.run(both)
        return
    if pid:
        mapping = provider_id_call(rt, gateway, msg_id, contact, pid)

        async def map_id(pipe: Pipeline) -> None:
            await rt.store.run("provider_id", keys=mapping.to_keys(), args=mapping.to_argv(), client=pipe)

        (raw,) = await rt.store.coalescer.run(map_id)
        parked = parse_parked(raw)
    call = status_call(
        rt, gateway, msg_id, contact, status, pid, error, stream=stream, entry_id=entry_id,
        record_gateway=record_gateway, parked=parked,
    )  # fmt: skip

    async def record(pipe: Pipeline) -> None:
        await rt.store.run("status", keys=call.to_keys(), args=call.to_argv(), client=pipe)

    await rt.store.coalescer.run(record)
    if parked:
        await rt.store.redis.delete(parked_key(rt, gateway, pid))


async def record_sent(rt: Host, gateway: str, msg_id: str, contact: str, pid: str) -> None:
    """Record that message ``msg_id`` of ``contact`` went out with provider id ``pid``."""
    await record_send(rt, gateway, msg_id, contact, "sent", pid, "", record_gateway=True)


async def apply_receipt(rt: Host, gateway: str, receipt: Receipt) -> str:
    """Record ``receipt`` on its message. Returns ``applied``, ``parked`` (the send is not
    recorded yet: applied when it is) or ``gone`` (the message left the log)."""
    now = rt.clock.now_ms()
    field = idmaps.field(receipt.provider_id)
    call = ReceiptArgs(
        parked_key(rt, gateway, field), tuple(lookup_keys(rt, gateway, field)), field,
        receipt.status, receipt.error, now, PARK_TTL_S,
    )  # fmt: skip

    async def find(pipe: Pipeline) -> None:
        await rt.store.run("receipt", keys=call.to_keys(), args=call.to_argv(), client=pipe)

    (found,) = await rt.store.coalescer.run(find)
    owner = parse_owner(found)
    if owner is None:
        rt.metrics.receipt(gateway, receipt.status, "parked")
        return "parked"
    return await record_receipt(rt, gateway, owner, receipt)


async def record_receipt(rt: Host, gateway: str, owner: str, receipt: Receipt) -> str:
    """Record ``receipt`` on the message ``owner`` names (``"N message-id"``, the value of its
    provider-id map field), in the contact's shard slot. Returns ``applied``, or ``gone`` (the
    message left the log)."""
    contact, _, message_id = owner.partition(" ")
    call = StatusArgs(
        contact=contact, shard=shard_of(rt, contact), message_id=message_id, status=receipt.status,
        now_ms=rt.clock.now_ms(), events_max=rt.config.engine.outcome_events_max, error=receipt.error,
    )  # fmt: skip

    async def record(pipe: Pipeline) -> None:
        await rt.store.run("status", keys=call.to_keys(), args=call.to_argv(), client=pipe)

    (ok,) = await rt.store.coalescer.run(record)
    result = "applied" if ok else "gone"
    rt.metrics.receipt(gateway, receipt.status, result)
    return result
