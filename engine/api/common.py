"""Helpers every route uses: the runtime key, JSON out, path numbers, timestamps (bodies and
query strings are read by their models: engine/api/schema.py)."""

from __future__ import annotations

import datetime as dt
import hmac
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from engine.errors import Unauthorized, Unprocessable
from engine.numbers import InvalidNumber, to_e164

if TYPE_CHECKING:
    from engine.runtime import Runtime

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")


def runtime(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


def check_api_key(request: web.Request) -> None:
    """401 unless the request carries one of the configured bearer keys."""
    keys = runtime(request).config.api.keys
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not keys:
        raise Unauthorized("no API keys are configured (set api.keys or PARLEY_API_KEYS)")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
    if not any(hmac.compare_digest(token.encode(), k.encode()) for k in keys):
        raise Unauthorized("unknown API key")


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def number_param(rt: Runtime, value: str, field: str = "number") -> str:
    try:
        return to_e164(value, rt.config.numbers.default_region)
    except InvalidNumber as exc:
        raise Unprocessable(field, f"{value!r} is not a phone number: {exc}", code="invalid_number") from None


def iso(ms: int | None) -> str | None:
    """Milliseconds since the epoch as ISO 8601 UTC (``2026-11-22T12:00:00.123Z``)."""
    if ms is None:
        return None
    t = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
