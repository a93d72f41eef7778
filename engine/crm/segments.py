"""Saved segments: named audiences (conditions on contact fields in the flows' ``when:`` syntax,
tags, a consent status), kept in one hash (``p:segments``: name -> definition) and read by
listings, exports and journey starts (``segment: NAME``) through the listing index
(engine/crm/listing.py), so selecting a segment never scans the keyspace.

A segment is a definition, not a frozen list: who is in it is decided when it is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from engine.core import keys
from engine.core.errors import NotFound, Unprocessable
from engine.core.store import Store
from engine.crm.listing import ContactFilter
from engine.flows.conditions import Condition, compile_condition
from engine.flows.reply_tests import TestArgError

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: At most this many segments (each is read whole by ``GET /v1/segments``).
MAX_SEGMENTS = 1000


@dataclass(frozen=True)
class Segment:
    name: str
    where: tuple[dict[str, Any], ...] = ()
    tags: tuple[str, ...] = ()
    consent: str | None = None
    created_at: int = 0
    updated_at: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "where": list(self.where),
            "tags": list(self.tags),
            "consent": self.consent,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    def filter(self) -> ContactFilter:
        return ContactFilter(compile_where(list(self.where), "where"), self.tags, self.consent)


def compile_where(raw: list[Any], path: str) -> tuple[Condition, ...]:
    """Conditions on ``contact.*`` (the flows' ``when:`` syntax), or a 422 naming ``path[i]``."""
    out = []
    for i, spec in enumerate(raw):
        if not isinstance(spec, dict) or not str(spec.get("field", "")).startswith("contact."):
            raise Unprocessable(f"{path}[{i}].field", "must be a contact field path (contact.NAME)")
        try:
            out.append(compile_condition(spec))
        except TestArgError as exc:
            raise Unprocessable(f"{path}[{i}]", str(exc)) from None
    return tuple(out)


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise Unprocessable("name", "segment names are letters, digits, _ and - (max 64)")
    return name


async def put(store: Store, segment: Segment, now_ms: int) -> tuple[Segment, bool]:
    """Save ``segment`` (replacing one of its name); the stored segment and whether it is new."""
    compile_where(list(segment.where), "where")
    old = await get(store, segment.name)
    if old is None and await store.redis.hlen(keys.segments()) >= MAX_SEGMENTS:
        raise Unprocessable("name", f"there are already {MAX_SEGMENTS} segments; delete one first")
    stored = Segment(
        segment.name, segment.where, segment.tags, segment.consent,
        old.created_at if old else now_ms, now_ms,
    )  # fmt: skip
    await store.redis.hset(keys.segments(), segment.name, orjson.dumps(stored.as_json()))
    return stored, old is None


def _parse(raw: bytes) -> Segment:
    d = orjson.loads(raw)
    return Segment(
        d["name"], tuple(d["where"]), tuple(d["tags"]), d["consent"], d["created_at"], d["updated_at"]
    )


async def get(store: Store, name: str) -> Segment | None:
    raw: Any = await store.redis.hget(keys.segments(), name)
    return None if raw is None else _parse(raw)


async def need(store: Store, name: str, field: str = "segment") -> Segment:
    """The segment ``name``, or a 404 whose message starts with ``field`` when there is none."""
    seg = await get(store, name)
    if seg is None:
        why = f"{field}: no segment {name!r} (save it with PUT /v1/segments/{name})"
        raise NotFound(why, code="segment_not_found")
    return seg


async def every(store: Store) -> list[Segment]:
    """Every segment, by name."""
    raw: dict[Any, Any] = await store.redis.hgetall(keys.segments())
    return sorted((_parse(v) for v in raw.values()), key=lambda s: s.name)


async def delete(store: Store, name: str) -> None:
    if not await store.redis.hdel(keys.segments(), name):
        raise NotFound(f"no segment {name!r}", code="segment_not_found")
