"""``POST /v1/inbound/{gateway}``: the generic inbound webhook."""

from __future__ import annotations

from aiohttp import web

from engine import intake
from engine.api.common import json_response, number_param, read_object, runtime
from engine.errors import Conflict, NotFound, Unprocessable

MAX_TEXT_CHARS = 10_000
MAX_ID_CHARS = 128


async def post_inbound(request: web.Request) -> web.Response:
    """Accept one inbound text. 202 once it is durably in Redis; 200 for a repeat of the same
    message id and text (nothing is processed twice); 409 for a reused id with another text."""
    rt = runtime(request)
    gateway = request.match_info["gateway"]
    if gateway not in rt.gateways:
        raise NotFound(
            f"no gateway {gateway!r} (configured: {', '.join(sorted(rt.gateways)) or 'none'})",
            code="gateway_not_found",
        )
    body = await read_object(request, {"from", "to", "text", "id"})
    for key in ("from", "text", "id"):
        if key not in body:
            raise Unprocessable(key, "required")
    sender = body["from"]
    if not isinstance(sender, str):
        raise Unprocessable("from", "must be a phone number string")
    contact = number_param(rt, sender, "from")
    text, pid, to = body["text"], body["id"], body.get("to", "")
    if not isinstance(text, str):
        raise Unprocessable("text", "must be a string")
    if len(text) > MAX_TEXT_CHARS:
        raise Unprocessable("text", f"longer than {MAX_TEXT_CHARS} characters")
    if not isinstance(pid, str | int) or isinstance(pid, bool) or not str(pid).strip():
        raise Unprocessable("id", "must be the provider's message id (a non-empty string)")
    if len(str(pid)) > MAX_ID_CHARS:
        raise Unprocessable("id", f"longer than {MAX_ID_CHARS} characters")
    if not isinstance(to, str):
        raise Unprocessable("to", "must be a string (our number or short code)")
    res = await intake.accept_inbound(
        rt, gateway=gateway, contact=contact, to=to, text=text, provider_id=str(pid)
    )
    if res.status == "conflict":
        raise Conflict(f"message id {pid!r} was already accepted with a different text", code="id_reused")
    return json_response(
        {"status": res.status, "event_id": res.event_id, "contact": contact},
        202 if res.status == "accepted" else 200,
    )
