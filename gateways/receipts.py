"""Delivery receipts: from a provider's id back to our message, whatever order things arrive in."""

from __future__ import annotations

from typing import TYPE_CHECKING

from redis.asyncio.client import Pipeline

from engine import keys
from gateways.base import Receipt

if TYPE_CHECKING:
    from engine.runtime import Runtime

#: How long a receipt waits for its send to be recorded before it is dropped.
PARK_TTL_S = 86400
PROVIDER_ID_TTL_S = 7 * 86400


async def apply_receipt(rt: Runtime, gateway: str, receipt: Receipt) -> str:
    """Record ``receipt`` on its message. Returns ``applied``, ``parked`` (the send is not
    recorded yet: applied when it is) or ``gone`` (the message left the log)."""
    now = rt.clock.now_ms()
    pid = receipt.provider_id

    async def find(pipe: Pipeline) -> None:
        await rt.store.run(
            "receipt",
            keys=[keys.provider_id(gateway, pid), keys.parked_receipt(gateway, pid)],
            args=[receipt.status, receipt.error.replace("|", "/"), now, PARK_TTL_S],
            client=pipe,
        )

    (found,) = await rt.store.coalescer.run(find)
    if not found:
        rt.metrics.receipt(gateway, receipt.status, "parked")
        return "parked"
    return await record_receipt(rt, gateway, found.decode(), receipt)


async def record_receipt(rt: Runtime, gateway: str, owner: str, receipt: Receipt) -> str:
    """Record ``receipt`` on the message ``owner`` names (``"N message-id"``, the value of its
    provider-id key). Returns ``applied``, or ``gone`` (the message left the log)."""
    now = rt.clock.now_ms()
    contact, _, message_id = owner.partition(" ")

    async def record(pipe: Pipeline) -> None:
        await rt.store.run(
            "status",
            keys=[keys.message_records(contact), "-", "-", "-", keys.flow_events()],
            args=[
                message_id,
                receipt.status,
                now,
                "",
                receipt.error,
                contact,
                0,
                "",
                "",
                "",
                rt.config.engine.outcome_events_max,
            ],
            client=pipe,
        )

    (ok,) = await rt.store.coalescer.run(record)
    result = "applied" if ok else "gone"
    rt.metrics.receipt(gateway, receipt.status, result)
    return result
