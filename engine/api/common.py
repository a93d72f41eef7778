"""Helpers every route uses: the runtime key, JSON out, path numbers, timestamps (bodies and
query strings are read by their models: engine/api/schema.py)."""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from engine.api.ports import ApiServices
from engine.core.errors import Unauthorized, Unprocessable
from engine.core.numbers import InvalidNumber, to_e164

RUNTIME: web.AppKey[ApiServices] = web.AppKey("runtime")
#: One route: method, path, handler (the table is engine/api/routes.py).
Route = tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]
#: The routes the app serves, as ``/v1/openapi.json`` describes them (handed in by build_app,
#: so the description's module need not import the route table that imports it).
ROUTES_SERVED: web.AppKey[tuple[Route, ...]] = web.AppKey("routes")


def runtime(request: web.Request) -> ApiServices:
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


def number_param(rt: ApiServices, value: str, field: str = "number") -> str:
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
