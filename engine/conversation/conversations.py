"""Reading a contact's conversation state and message log (for the API, chat and the demo)."""

from __future__ import annotations

from typing import Any

import orjson

from engine.conversation import sessions
from engine.core import keys
from engine.core.store import Store


async def load_state(store: Store, shards: int, number: str) -> dict[str, Any] | None:
    """The stored session state of a contact, or None if there is none (``shards``:
    engine.shards, which places the contact's keys)."""
    key = keys.session(number, keys.shard_of(number, shards))
    return sessions.state_of(await store.redis.get(key)) or None


def describe(state: dict[str, Any]) -> dict[str, Any]:
    """Session state (short keys) as the API spells it (times left as ms for the caller)."""
    waiting = state.get("n") is not None
    return {
        "flow": state.get("f"),
        "flow_version": state.get("fv"),
        "status": "waiting" if waiting else "ended",
        "node": state.get("n"),
        "outcome": state.get("o"),
        "started_at": state.get("st"),
        "waiting_since": state.get("ws") if waiting else None,
        "ended_at": state.get("ea"),
        "error": state.get("err"),
        "results": {
            name: {
                "value": r.get("v"),
                "category": r.get("c"),
                "text": r.get("t"),
                "at": r.get("at"),
            }
            for name, r in state.get("r", {}).items()
        },
    }


async def recent_messages(store: Store, shards: int, number: str, limit: int) -> list[dict[str, Any]]:
    """The last ``limit`` messages of a contact, oldest first (two round trips)."""
    shard = keys.shard_of(number, shards)
    ids: list[bytes] = await store.redis.zrange(keys.message_index(number, shard), -limit, -1)  # type: ignore[assignment]
    if not ids:
        return []
    raw = await store.redis.hmget(keys.message_records(number, shard), ids)
    return [orjson.loads(r) for r in raw if r is not None]


async def find_messages(
    store: Store, shards: int, number: str, limit: int, *, status: str | None = None,
    since: int | None = None, until: int | None = None, before: int | None = None,
) -> tuple[list[dict[str, Any]], int | None]:  # fmt: skip
    """The newest ``limit`` messages of a contact that match (status, ``since`` <= at < ``until``,
    logged before sequence number ``before``), oldest first; and the sequence number to go on
    from for older matches (None: there are none). The log is trimmed per contact
    (``engine.message_log_size``), so reading its index whole is bounded."""
    shard = keys.shard_of(number, shards)
    hi = f"({before}" if before is not None else "+inf"
    index: list[tuple[bytes, float]] = await store.redis.zrange(  # type: ignore[assignment]
        keys.message_index(number, shard), "-inf", hi, byscore=True, withscores=True
    )
    if not index:
        return [], None
    filtered = status is not None or since is not None or until is not None
    wanted = index if filtered else index[-(limit + 1) :]
    raw = await store.redis.hmget(keys.message_records(number, shard), [i for i, _ in wanted])
    found: list[tuple[int, dict[str, Any]]] = []
    for (_, seq), r in zip(wanted, raw, strict=True):
        if r is None:
            continue
        m = orjson.loads(r)
        at = m.get("at") or 0
        if status is not None and m.get("status") != status:
            continue
        if (since is not None and at < since) or (until is not None and at >= until):
            continue
        found.append((int(seq), m))
    page = found[-limit:]
    older = page[0][0] if len(found) > limit else None
    return [m for _, m in page], older
