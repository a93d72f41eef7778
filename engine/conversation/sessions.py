"""How a conversation session is stored: one Redis string, ``"<version>|<last event>|<state json>"``.

One string instead of a hash because it is less than half the memory: Redis keeps a small hash
compact only while every value is at most 64 bytes (``hash-max-listpack-value``), and a state is
longer, so a hash became a full hash table (400 bytes for a waiting NPS conversation; this
string is about 150). The state itself leaves out what is empty (no results yet, no parameters,
no reprompts used); readers treat a missing key as empty.

    version      compare-and-swap counter, moved by every commit (commit.lua)
    last event   the last inbound event applied, "shard/stream id" (redeliveries are dropped)
    state        orjson: f flow, fv/fh version and digest, st started ms, n node (None: ended),
                 ws waiting since ms, rp reprompts used, r results, p parameters, o outcome ...
"""

from __future__ import annotations

from typing import Any

import orjson

#: Keys left out of the stored state when they hold these (empty) values.
_EMPTY: dict[str, Any] = {"r": {}, "p": {}, "rp": 0}


def pack_state(state: dict[str, Any]) -> str:
    return orjson.dumps({k: v for k, v in state.items() if not (k in _EMPTY and v == _EMPTY[k])}).decode()


def unpack(raw: bytes | str | None) -> tuple[int, str, dict[str, Any]]:
    """(version, last applied event, state) of a stored session; (0, "", {}) when there is none."""
    if not raw:
        return 0, "", {}
    if isinstance(raw, str):
        raw = raw.encode()
    version, last, state = raw.split(b"|", 2)
    return int(version), last.decode(), orjson.loads(state) if state else {}


def state_of(raw: bytes | str | None) -> dict[str, Any]:
    return unpack(raw)[2]


#: Sessions written by builds before the string format were hashes (v, li, d); converted in place.
_MIGRATE = """
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then return 0 end
local h = redis.call('HMGET', KEYS[1], 'v', 'li', 'd')
local ttl = redis.call('TTL', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[1], (h[1] or '0') .. '|' .. (h[2] or '') .. '|' .. (h[3] or ''))
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
"""


async def migrate(redis: Any, key: str) -> bool:
    """Convert one hash-format session to the string format (atomic); True if it was one."""
    return bool(await redis.eval(_MIGRATE, 1, key))
