"""``POST /v1/flows/{flow}/start``: start a flow for a list of contacts."""

from __future__ import annotations

import orjson
from aiohttp import web

from engine import contacts, intake, keys, sessions
from engine.api.common import json_response, number_param, read_object, runtime
from engine.errors import FlowErrors, NotFound, Unprocessable
from engine.turn import missing_fields

MAX_CONTACTS = 10_000


async def reload_flows(request: web.Request) -> web.Response:
    """Reload the flows directory: 200 with the loaded versions, or 422 listing every problem
    (nothing changes then). Conversations in progress finish on the version they started with."""
    rt = runtime(request)
    try:
        registry = await rt.reload_flows()
    except FlowErrors as exc:
        return json_response(
            {
                "error": {
                    "code": "invalid_flows",
                    "message": f"{len(exc.errors)} problem(s); the flows in use are unchanged",
                    "problems": [str(e) for e in exc.errors],
                }
            },
            422,
        )
    return json_response(
        {"flows": {f.name: {"version": f.version, "digest": f.digest} for f in registry.flows.values()}}
    )


async def start_flow(request: web.Request) -> web.Response:
    """Queue a start per contact; 202 once every start is in Redis.

    All contacts must exist (404 names the missing ones, nothing is started). A contact already
    waiting in a conversation is skipped (reported) unless ``interrupt`` is true.
    """
    rt = runtime(request)
    name = request.match_info["flow"]
    if rt.flows.get(name) is None:
        raise NotFound(
            f"no flow {name!r} (loaded: {', '.join(sorted(rt.flows.flows)) or 'none'})",
            code="flow_not_found",
        )
    body = await read_object(request, {"contacts", "params", "interrupt"})
    raw = body.get("contacts")
    if not isinstance(raw, list) or not raw:
        raise Unprocessable("contacts", "must be a non-empty list of phone numbers")
    if len(raw) > MAX_CONTACTS:
        raise Unprocessable("contacts", f"at most {MAX_CONTACTS} per request")
    numbers: list[str] = []
    for i, n in enumerate(raw):
        if not isinstance(n, str):
            raise Unprocessable(f"contacts[{i}]", "must be a phone number string")
        numbers.append(number_param(rt, n, f"contacts[{i}]"))
    numbers = list(dict.fromkeys(numbers))  # the same person twice is one start
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise Unprocessable("params", "must be an object")
    interrupt = body.get("interrupt", False)
    if not isinstance(interrupt, bool):
        raise Unprocessable("interrupt", "must be true or false")
    missing = await contacts.missing(rt.store, numbers)
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise NotFound(
            f"unknown contacts: {shown} (create them with PUT /v1/contacts/{{number}})",
            code="contact_not_found",
        )

    flow = rt.flows.get(name)
    assert flow is not None
    async with rt.store.redis.pipeline(transaction=False) as pipe:
        for n in numbers:
            pipe.get(keys.session(n))
            pipe.hget(keys.contact(n), "f")
        loaded = await pipe.execute()
    skipped: list[dict[str, str]] = []
    ready: list[str] = []
    for n, state, fields in zip(numbers, loaded[::2], loaded[1::2], strict=True):
        lacking = missing_fields(flow, contacts.Contact(n, orjson.loads(fields or b"{}")))
        if lacking:
            skipped.append({"contact": n, "reason": "missing_fields", "fields": ",".join(lacking)})
        elif not interrupt and sessions.state_of(state).get("n") is not None:
            skipped.append({"contact": n, "reason": "in_conversation"})
        else:
            ready.append(n)
    numbers = ready
    ids = await intake.enqueue_starts(rt, name, numbers, params, interrupt=interrupt) if numbers else []
    started = [{"contact": n, "event_id": i} for n, i in zip(numbers, ids, strict=True)]
    return json_response({"flow": name, "started": started, "skipped": skipped}, 202)
