"""One outcome webhook request: the JSON a CRM receives, its signature, and what an answer means.

What is sent for a ``p:fx:T`` entry ``{"t", "c", "f", "run", "at", ...}`` (engine/conversation/outcomes.py):

    {"id": "<event id>", "type": "replied", "contact": "+447700900123", "flow": "nps",
     "run": "+447700900123/1767225600000", "at": "2026-01-01T00:00:04.000Z", ...its own fields}

(the event id is the entry id in its shard's stream, with ``S/`` before it for shard S > 0,
engine/crm/webhooks.py; a ``message`` event's ``m`` is sent as ``message_id``; a ``consent``
event outside a run has ``flow`` and ``run`` null). An event's own field whose name the
envelope already uses is sent as ``<type>_<name>``, never dropped: a ``conversion``'s own
``type`` (``purchase``) arrives as
``conversion_type``. Headers: ``X-Parley-Timestamp`` (Unix seconds, at this attempt),
``X-Parley-Signature: sha256=<hex HMAC-SHA256 of "{timestamp}." + body>`` (the scheme Parley
checks on inbound webhooks, gateways/http_common.py), ``X-Parley-Event-Id`` (the entry id, or
the ids of a batch joined by commas: the receiver's idempotency key).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from engine.core.http import retry_after, sign

#: Answers worth trying again (with every 5xx): timeout, too early, too many requests.
RETRY_STATUS = frozenset({408, 425, 429})


@dataclass(frozen=True)
class Answer:
    """What one attempt came to: ``ok`` (2xx), ``retry`` (try again) or ``reject`` (give up now)."""

    outcome: str
    error: str = ""
    retry_after: float | None = None


def iso(ms: int | None) -> str | None:
    """Milliseconds since the epoch as ISO 8601 UTC, like the API's timestamps."""
    if ms is None:
        return None
    t = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def payload(event_id: str, raw: bytes | str) -> dict[str, Any]:
    """The JSON object the CRM receives for the stored event ``raw`` (see the module docstring)."""
    e: dict[str, Any] = orjson.loads(raw)
    out: dict[str, Any] = {
        "id": event_id, "type": e.pop("t", None), "contact": e.pop("c", None), "flow": e.pop("f", None),
        "run": e.pop("run", None), "at": iso(e.pop("at", None)),
    }  # fmt: skip
    if "m" in e:
        out["message_id"] = e.pop("m")
    for key, value in e.items():
        # A clash is renamed, not dropped: the CRM must see a conversion's own type.
        while key in out:
            key = f"{out['type']}_{key}"
        out[key] = value
    return out


def headers(secret: str, timestamp: int, body: bytes, event_ids: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Parley-Timestamp": str(timestamp),
        "X-Parley-Signature": sign(secret, timestamp, body),
        "X-Parley-Event-Id": event_ids,
    }


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, hdrs: dict[str, str], timeout: float
) -> Answer:
    """POST once. Timeouts, connection errors, 408/425/429 and 5xx are ``retry`` (with the
    answer's ``Retry-After``); any other non-2xx (a 4xx, a redirect) is ``reject``."""
    try:
        async with session.post(
            url, data=body, headers=hdrs, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False
        ) as resp:
            text = await resp.content.read(200)
            status, wait = resp.status, resp.headers.get("Retry-After")
    except TimeoutError:
        return Answer("retry", f"no answer within {timeout:g}s")
    except aiohttp.ClientError as exc:
        return Answer("retry", f"{type(exc).__name__}: {exc}")
    if 200 <= status < 300:
        return Answer("ok")
    error = f"HTTP {status}: {text.decode(errors='replace')}".strip()
    if status in RETRY_STATUS or status >= 500:
        return Answer("retry", error, retry_after(wait))
    return Answer("reject", error)
