"""``GET /v1/conversations/{number}`` and ``GET /v1/messages?contact=N``."""

from __future__ import annotations

from aiohttp import web

from engine.api.common import iso, json_response, number_param, runtime
from engine.conversation import conversations
from engine.core import contacts
from engine.core.errors import NotFound, Unprocessable

MAX_LIMIT = 500


async def get_conversation(request: web.Request) -> web.Response:
    """The contact's current (or last) conversation: flow, node, waiting since, results."""
    rt = runtime(request)
    number = number_param(rt, request.match_info["number"])
    state = await conversations.load_state(rt.store, number)
    if state is None:
        if await contacts.get(rt.store, number) is None:
            raise NotFound(f"no contact {number}", code="contact_not_found")
        return json_response({"contact": number, "status": "none", "flow": None, "results": {}})
    view = conversations.describe(state)
    for key in ("started_at", "waiting_since", "ended_at"):
        view[key] = iso(view[key])
    for r in view["results"].values():
        r["at"] = iso(r["at"])
    return json_response({"contact": number, **view})


async def get_messages(request: web.Request) -> web.Response:
    """A contact's message log, in and out, oldest first, each with its status history."""
    rt = runtime(request)
    raw = request.query.get("contact")
    if not raw:
        raise Unprocessable("contact", "query parameter required: /v1/messages?contact=+447700900123")
    number = number_param(rt, raw, "contact")
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        raise Unprocessable("limit", "must be a whole number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise Unprocessable("limit", f"must be between 1 and {MAX_LIMIT}")
    msgs = await conversations.recent_messages(rt.store, number, limit)
    for m in msgs:
        m["at"] = iso(m["at"])
        m["history"] = [
            {"status": h[0], "at": iso(h[1]), **({"detail": h[2]} if len(h) > 2 else {})}
            for h in m.get("history", [])
        ]
    return json_response({"contact": number, "messages": msgs})
