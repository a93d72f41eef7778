"""``GET /v1/webhooks/dead`` and ``POST /v1/webhooks/dead:replay``: the outcome webhooks' dead letters."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from engine.api.common import json_response, read_object, runtime
from engine.core.errors import NotFound, Unprocessable
from engine.crm import webhooks_dead

MAX_LIMIT = 1000
ENTRY_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")


def _indexes(request: web.Request, value: Any, *, from_query: bool) -> list[int]:
    """The webhooks meant: every one (``value`` None), or the one at index ``value`` (a whole
    number; in a query string its text). An index crm.webhooks does not have is a 404, like an
    unknown flow."""
    hooks = runtime(request).config.crm.webhooks
    if value is None:
        return list(range(len(hooks)))
    if from_query:
        try:
            value = int(value)
        except ValueError:
            raise Unprocessable("webhook", f"expected a webhook index, got {value!r}") from None
    if isinstance(value, float) and value.is_integer():  # JSON's 1.0 is the integer 1
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Unprocessable("webhook", f"expected a webhook index (0, 1, ...), got {value!r}")
    if value >= len(hooks):
        raise NotFound(f"no webhook {value} (crm.webhooks has {len(hooks)})", code="webhook_not_found")
    return [value]


async def get_dead(request: web.Request) -> web.Response:
    """Each webhook's dead letters, oldest first: ``?webhook=I`` one of them, ``?limit=N`` (100)."""
    rt = runtime(request)
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise Unprocessable("limit", "expected a whole number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise Unprocessable("limit", f"must be 1..{MAX_LIMIT}")
    out = []
    for i in _indexes(request, request.query.get("webhook"), from_query=True):
        count, dead = await webhooks_dead.letters(rt.store, i, limit)
        out.append({"webhook": i, "url": rt.config.crm.webhooks[i].url, "count": count, "dead": dead})
    return json_response({"webhooks": out})


async def post_replay(request: web.Request) -> web.Response:
    """Send dead letters again: all, one webhook's (``{"webhook": I}``), or some (``"ids"``)."""
    rt = runtime(request)
    body = await read_object(request, {"webhook", "ids"}) if request.body_exists else {}
    ids = body.get("ids")
    if ids is not None:
        if body.get("webhook") is None:
            raise Unprocessable("ids", "say which webhook the ids are from ('webhook')")
        well_formed = isinstance(ids, list) and all(isinstance(x, str) and ENTRY_ID.match(x) for x in ids)
        if not well_formed or len(ids) > 10_000:
            raise Unprocessable("ids", "expected a list of up to 10,000 dead letter ids")
    replayed = {}
    for i in _indexes(request, body.get("webhook"), from_query=False):
        replayed[str(i)] = await webhooks_dead.replay(rt.store, i, ids)
    return json_response({"replayed": replayed})
