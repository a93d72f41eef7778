"""Dead letters of the outcome webhooks: what a webhook gave up on, listed and replayed.

A letter in ``p:whdead:{wI}`` holds the event as stored in its ``p:fx:T`` (``e``), its event id (``id``,
the ``X-Parley-Event-Id`` it was sent with), the last ``error``, the ``attempts`` made and when
it was given up (``at`` ms). Replaying moves letters, atomically (webhook_replay.lua), onto the
webhook's replay stream ``p:whre:{wI}``, which its dispatcher reads in the same consumer group as
``p:fx:T``: the event is sent again with its original id, ``max_attempts`` afresh, in the lane of
its contact; if it fails again it is dead-lettered again. Nothing is added to a ``p:fx:T``, so the
other webhooks and the reports never see a replay.
"""

from __future__ import annotations

from typing import Any, cast

from engine.core import keys
from engine.core.scripts.webhook_replay import WebhookReplayArgs
from engine.core.store import Store
from engine.crm.webhooks_http import iso, payload

PAGE = 500


def _letter(entry_id: bytes, fields: dict[bytes, bytes]) -> dict[str, Any]:
    event_id = fields.get(b"id", b"").decode()
    return {
        "id": entry_id.decode(),
        "event_id": event_id,
        "error": fields.get(b"error", b"").decode(),
        "attempts": int(fields.get(b"attempts", b"0")),
        "dead_at": iso(int(fields.get(b"at", b"0"))),
        "event": payload(event_id, fields.get(b"e", b"{}")),
    }


async def letters(store: Store, index: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """How many letters webhook ``index`` holds, and the oldest ``limit`` of them."""
    async with store.redis.pipeline(transaction=False) as pipe:
        pipe.xlen(keys.webhook_dead(index))
        pipe.xrange(keys.webhook_dead(index), count=limit)
        count, entries = await pipe.execute()
    return int(count), [_letter(eid, f) for eid, f in entries]


async def _replay(store: Store, call: WebhookReplayArgs) -> int:
    return int(await store.run("webhook_replay", call.to_keys(), call.to_argv()))


async def replay(store: Store, index: int, ids: list[str] | None = None) -> int:
    """Replay the letters ``ids`` of webhook ``index`` (all of those there now when None)."""
    dead = keys.webhook_dead(index)
    if ids is not None:
        return sum(
            [
                await _replay(store, WebhookReplayArgs(index, tuple(ids[i : i + PAGE])))
                for i in range(0, len(ids), PAGE)
            ]
        )
    # Up to the newest letter now: a letter that fails again while this runs is not replayed twice.
    newest = cast(list[tuple[bytes, Any]], await store.redis.xrevrange(dead, count=1))
    if not newest:
        return 0
    moved, start = 0, "-"
    while True:
        page = cast(
            list[tuple[bytes, Any]], await store.redis.xrange(dead, min=start, max=newest[0][0], count=PAGE)
        )
        if not page:
            return moved
        moved += await _replay(store, WebhookReplayArgs(index, tuple(eid for eid, _ in page)))
        start = "(" + page[-1][0].decode()
