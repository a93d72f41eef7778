"""Delivery receipts: from a provider's id back to our message, whatever order things arrive in."""

from __future__ import annotations

from redis.asyncio.client import Pipeline

from engine.core import idmaps, keys
from gateways.base import Host, Receipt, SendPolicy
from gateways.scripts.receipt import ReceiptArgs, parse_owner
from gateways.scripts.status import StatusArgs

#: How long a receipt waits for its send to be recorded before it is dropped.
PARK_TTL_S = 86400
#: Buckets of connectors that are no longer configured (their receipts still resolve).
DEFAULT_BUCKETS = idmaps.plan(SendPolicy().receipt_window, 0)


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


def status_call(
    rt: Host,
    gateway: str,
    msg_id: str,
    contact: str,
    status: str,
    pid: str,
    error: str,
    *,
    stream: str = "-",
    entry_id: str | bytes = "",
    record_gateway: bool = False,
) -> StatusArgs:
    """The status.lua call recording a send's outcome: the message's new status, its provider
    id (when there is one: receipts find the message by it, and a receipt that came first,
    parked under that literal id, is applied), the outbound entry acknowledged, and with
    ``record_gateway`` the connector that sent it."""
    now = rt.clock.now_ms()
    b = buckets_of(rt, gateway)
    field = idmaps.field(pid) if pid else "-"
    slot = b.slot(field)
    return StatusArgs(
        contact=contact, message_id=msg_id, status=status, now_ms=now,
        events_max=rt.config.engine.outcome_events_max, error=error, provider_id=pid,
        provider_field=field, provider_ids_key=keys.provider_ids(gateway, slot, b.bucket(now)),
        provider_ids_ttl_s=b.ttl_s(now), parked_key=keys.parked_receipt(gateway, slot, field),
        stream=stream, entry_id=entry_id, group=keys.OUTBOUND_GROUP,
        gateway=gateway if record_gateway else "",
    )  # fmt: skip


async def record_sent(rt: Host, gateway: str, msg_id: str, contact: str, pid: str) -> None:
    """Record that message ``msg_id`` of ``contact`` went out with provider id ``pid``."""
    call = status_call(rt, gateway, msg_id, contact, "sent", pid, "", record_gateway=True)
    await rt.store.run("status", keys=call.to_keys(), args=call.to_argv())


async def apply_receipt(rt: Host, gateway: str, receipt: Receipt) -> str:
    """Record ``receipt`` on its message. Returns ``applied``, ``parked`` (the send is not
    recorded yet: applied when it is) or ``gone`` (the message left the log)."""
    now = rt.clock.now_ms()
    pid = receipt.provider_id
    field = idmaps.field(pid)
    legacy = keys.legacy_provider_id(gateway, pid)
    call = ReceiptArgs(
        parked_key(rt, gateway, field), legacy, tuple(lookup_keys(rt, gateway, field)), field,
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
    provider-id key). Returns ``applied``, or ``gone`` (the message left the log)."""
    now = rt.clock.now_ms()
    contact, _, message_id = owner.partition(" ")

    call = StatusArgs(
        contact=contact, message_id=message_id, status=receipt.status, now_ms=now,
        events_max=rt.config.engine.outcome_events_max, error=receipt.error,
    )  # fmt: skip

    async def record(pipe: Pipeline) -> None:
        await rt.store.run("status", keys=call.to_keys(), args=call.to_argv(), client=pipe)

    (ok,) = await rt.store.coalescer.run(record)
    result = "applied" if ok else "gone"
    rt.metrics.receipt(gateway, receipt.status, result)
    return result
