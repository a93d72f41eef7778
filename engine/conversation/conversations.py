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
