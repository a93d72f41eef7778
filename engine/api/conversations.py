"""``GET /v1/conversations/{number}`` and ``GET /v1/messages?contact=N``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from engine.api.common import iso, json_response, number_param, runtime
from engine.api.schema import NUMBER, Answer, Operation, PhoneNumber, Query, operation, read_query
from engine.conversation import conversations
from engine.core import contacts
from engine.core.errors import NotFound

MAX_LIMIT = 500


class MessagesQuery(Query):
    contact: Annotated[PhoneNumber, Field(description="the contact's number")]
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT, description="at most this many (newest; 50)")] = 50

    MESSAGES = {
        "contact": "query parameter required: /v1/messages?contact=+447700900123",
        "limit": f"must be a whole number between 1 and {MAX_LIMIT}",
    }


class Conversation(BaseModel):
    """The contact's current or last conversation (status none: there was none)."""

    contact: str
    flow: str | None
    status: Literal["waiting", "ended", "none"]
    node: str | None = None
    outcome: str | None = None
    results: dict[str, Any]


class Messages(BaseModel):
    contact: str = ""
    messages: list[dict[str, Any]]


ERR = (401, 422, 503)


@operation(Operation(
    "get_conversation", "conversations", "The current or last conversation with its results",
    {200: Answer("the conversation", Conversation)}, errors=(404, *ERR), params=(NUMBER,),
))  # fmt: skip
async def get_conversation(request: web.Request) -> web.Response:
    """The contact's current (or last) conversation: flow, node, waiting since, results."""
    rt = runtime(request)
    number = number_param(rt, request.match_info["number"])
    state = await conversations.load_state(rt.store, rt.config.engine.shards, number)
    if state is None:
        if await contacts.get(rt.store, rt.config.engine.shards, number) is None:
            raise NotFound(f"no contact {number}", code="contact_not_found")
        return json_response({"contact": number, "status": "none", "flow": None, "results": {}})
    view = conversations.describe(state)
    for key in ("started_at", "waiting_since", "ended_at"):
        view[key] = iso(view[key])
    for r in view["results"].values():
        r["at"] = iso(r["at"])
    return json_response({"contact": number, **view})


@operation(Operation(
    "list_messages", "conversations", "A contact's message log, oldest first, with status histories",
    {200: Answer("messages", Messages)}, errors=(404, *ERR), query=MessagesQuery,
))  # fmt: skip
async def get_messages(request: web.Request) -> web.Response:
    """A contact's message log, in and out, oldest first, each with its status history."""
    rt = runtime(request)
    query = read_query(request, MessagesQuery, rt)
    number, limit = query.contact, query.limit
    msgs = await conversations.recent_messages(rt.store, rt.config.engine.shards, number, limit)
    for m in msgs:
        m["at"] = iso(m["at"])
        m["history"] = [
            {"status": h[0], "at": iso(h[1]), **({"detail": h[2]} if len(h) > 2 else {})}
            for h in m.get("history", [])
        ]
    return json_response({"contact": number, "messages": msgs})
