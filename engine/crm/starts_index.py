"""The list of journey starts (``p:starts``, engine/core/keys.py): one sorted set, all scores 0,
members ``AT|ID`` (AT: when it was asked for, ms, 13 digits), so newest first is a reverse
``ZRANGE BYLEX`` from a cursor, stable while new starts are made (they sort above every page
already read). Members older than a start record's lifetime are trimmed when a start is added.

A start's status comes from its record (``p:start:ID``): ``cancelled`` once a cancel marked it
(``cancelled_at``), ``scheduled`` when some of its starts wait for ``send_at``, else ``queued``.
"""

from __future__ import annotations

from typing import Any

from engine.core import keys
from engine.core.store import Store
from engine.crm.index import stamp
from engine.crm.journeys import START_TTL_S

STATUSES = ("queued", "scheduled", "cancelled")
#: Members read per round trip.
FETCH = 200
#: A page reads at most this many starts (a narrow filter may answer fewer, with a cursor).
MAX_EXAMINED = 5000


async def add(store: Store, start_id: str, at_ms: int) -> None:
    """List the start, and forget those past a record's lifetime (one round trip)."""
    async with store.redis.pipeline(transaction=False) as pipe:  # one key
        pipe.zadd(keys.start_list(), {f"{stamp(at_ms)}|{start_id}": 0})
        pipe.zremrangebylex(keys.start_list(), "-", f"({stamp(at_ms - START_TTL_S * 1000)}")
        await pipe.execute()


def status_of(rec: dict[str, str]) -> str:
    if rec.get("cancelled_at"):
        return "cancelled"
    return "scheduled" if int(rec.get("scheduled", "0") or 0) > 0 else "queued"


async def page(
    store: Store, *, flow: str | None, status: str | None, limit: int, after: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Starts newest first after position ``after`` (``AT|ID``); and the position to go on from
    (None: no more)."""
    r = store.redis
    top = f"({after}" if after else "+"
    found: list[dict[str, Any]] = []
    examined = 0
    while True:
        members: list[Any] = await r.zrange(
            keys.start_list(), top, "-", desc=True, bylex=True, offset=0, num=FETCH
        )
        if not members:
            return found, None
        positions = [m.decode() for m in members]
        async with r.pipeline(transaction=False) as pipe:
            for p in positions:
                pipe.hgetall(keys.start_record(p.split("|", 1)[1]))
            records = await pipe.execute()
        for i, (p, raw) in enumerate(zip(positions, records, strict=True)):
            examined += 1
            rec = {k.decode(): v.decode() for k, v in raw.items()}
            wanted = flow in (None, rec.get("flow")) and status in (None, status_of(rec))
            if rec and wanted:
                found.append({
                    "start": p.split("|", 1)[1], "flow": rec.get("flow", ""), "at": int(rec.get("at", "0")),
                    "status": status_of(rec), "experiment": rec.get("experiment") or None,
                    "requested": int(rec.get("requested", "0")), "queued": int(rec.get("queued", "0")),
                    "scheduled": int(rec.get("scheduled", "0")),
                })  # fmt: skip
            last_of_all = len(members) < FETCH and i == len(positions) - 1
            if len(found) >= limit or examined >= MAX_EXAMINED:
                return found, None if last_of_all else p
        if len(members) < FETCH:
            return found, None
        top = f"({positions[-1]}"
