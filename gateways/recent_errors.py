"""A connector's last send errors, kept in Redis for people to read (the console's Gateways
page): every failed attempt (``retry``: a retryable failure; ``rejected``: the provider refused
the message, it fails at once; ``crash``: a connector bug), with its message id and the error,
in one bounded stream per connector (``p:gwerr:{GW}``, the last :data:`KEEP`). Written on the
failure path only (an open circuit sends one probe every few seconds, so an outage writes
little); a write that fails is dropped, never the send. Phone numbers in provider error texts
are masked before they are kept.
"""

from __future__ import annotations

import logging
import re
from typing import Any, cast

import redis.asyncio as aioredis

from engine.core import keys
from engine.core.numbers import mask
from engine.core.store import Store

log = logging.getLogger(__name__)

#: Errors kept per connector.
KEEP = 100
#: The longest error text kept.
MAX_TEXT = 500
_NUMBER = re.compile(r"\+?\d[\d ]{6,16}\d")


def scrub(text: str) -> str:
    """``text`` with anything that looks like a phone number masked, cut to :data:`MAX_TEXT`."""
    return _NUMBER.sub(lambda m: mask(m.group(0).replace(" ", "")), text)[:MAX_TEXT]


async def note(store: Store, gateway: str, at_ms: int, kind: str, message_id: str, error: str) -> None:
    """Keep one error of ``gateway`` (a Redis failure here is logged and dropped)."""
    entry: dict[Any, Any] = {"at": at_ms, "kind": kind, "msg": message_id, "error": scrub(error)}
    try:
        await store.redis.xadd(keys.gateway_errors(gateway), entry, maxlen=KEEP, approximate=False)
    except (aioredis.RedisError, OSError) as exc:
        log.debug("cannot keep an error of %s: %s", gateway, exc)


async def recent(store: Store, gateway: str, count: int = 20) -> list[dict[str, str]]:
    """The newest ``count`` errors of ``gateway``, newest first."""
    rows = cast(
        list[tuple[bytes, dict[bytes, bytes]]],
        await store.redis.xrevrange(keys.gateway_errors(gateway), count=count),
    )
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rows]
