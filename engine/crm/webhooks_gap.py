"""What an outcome webhook lost to trimming: ``p:fx:T`` entries gone before its group read them
(each shard's stream is measured alone).

Each ``p:fx:T`` is trimmed to ``engine.outcome_events_max`` whatever its consumer groups have read.
Two cheap checks (Redis 7):

- before a read, while the group's last delivered id is older than the stream's first entry,
  everything still in the stream is unread, so ``lag - length`` entries were trimmed unread
  (``lag`` is entries added minus the group's read counter). A group made on an empty stream
  has no read counter until its first read, and an XDEL (erasure) after its cursor makes Redis
  report no lag: those gaps are not counted (0).
- on start, pending entries that are no longer in the stream are dropped from the group;
  XAUTOCLAIM returns their ids.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis


def _id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def trimmed_unread(r: aioredis.Redis, stream: str, group: str) -> int:
    """How many entries were trimmed from ``stream`` before ``group`` read them (0 if unknown)."""
    async with r.pipeline(transaction=False) as pipe:
        pipe.xinfo_groups(stream)
        pipe.xinfo_stream(stream)
        groups, info = await pipe.execute()
    mine = next((g for g in groups if g["name"] == group.encode()), None)
    first = info.get("first-entry")
    if mine is None or not first or mine.get("lag") is None:
        return 0
    if _id(first[0]) <= _id(mine["last-delivered-id"]):
        return 0
    return max(0, int(mine["lag"]) - int(info["length"]))


async def drop_deleted_pending(r: aioredis.Redis, stream: str, group: str, consumer: str) -> int:
    """Drop pending entries of ``group`` no longer in ``stream`` (claiming the rest for
    ``consumer``, the group's only reader); how many were dropped."""
    cursor: Any = "0-0"
    dropped = 0
    while True:
        cursor, _, deleted = await r.xautoclaim(stream, group, consumer, 0, cursor, count=200)
        dropped += len(deleted)
        if cursor in (b"0-0", "0-0"):
            return dropped
