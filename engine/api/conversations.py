"""``GET /v1/conversations/{number}`` and ``GET /v1/messages?contact=N``."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from engine.api.common import iso, json_response, number_param, runtime
from engine.api.schema import NUMBER, Answer, Operation, PhoneNumber, Query, operation, read_query
from engine.conversation import conversations
from engine.core import contacts
from engine.core.errors import NotFound, Unprocessable

MAX_LIMIT = 500


DATE_TIME: dict[str, Any] = {"format": "date-time"}


class MessagesQuery(Query):
    contact: Annotated[PhoneNumber, Field(description="the contact's number")]
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT, description="at most this many (newest; 50)")] = 50
    status: Annotated[str | None, Field(pattern="^[a-z_]{1,32}$", description="only this status")] = None
    since: Annotated[str | None, Field(json_schema_extra=DATE_TIME, description="at or after")] = None
    until: Annotated[str | None, Field(json_schema_extra=DATE_TIME, description="before")] = None
    cursor: Annotated[
        str | None, Field(pattern="^[A-Za-z0-9_=-]{1,200}$", description="the last page's next_cursor: older")
    ] = None

    MESSAGES = {
        "contact": "query parameter required: /v1/messages?contact=+447700900123",
        "limit": f"must be a whole number between 1 and {MAX_LIMIT}",
        "status": "must be a message status like queued, sent, delivered, failed, blocked or received",
        "since": "must be an ISO 8601 time like 2026-12-01T00:00:00Z",
        "until": "must be an ISO 8601 time like 2026-12-01T00:00:00Z",
        "cursor": "must be the next_cursor of the previous page",
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
    next_cursor: str | None = Field(None, description="older messages that match: pass it as cursor")


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
    "list_messages", "conversations",
    "A contact's message log, oldest first, with status histories; by status and time, a page at a time",
    {200: Answer("messages", Messages)}, errors=(404, *ERR), query=MessagesQuery,
))  # fmt: skip
async def get_messages(request: web.Request) -> web.Response:
    """A contact's message log, in and out, oldest first, each with its status history: the
    newest ``limit`` that match, and a cursor to the older ones (engine/conversation/conversations.py)."""
    rt = runtime(request)
    query = read_query(request, MessagesQuery, rt)
    number, limit = query.contact, query.limit
    before = None
    if query.cursor is not None:
        before = message_cursor(query.cursor)
    msgs, older = await conversations.find_messages(
        rt.store, rt.config.engine.shards, number, limit,
        status=query.status, since=_ms(query.since, "since"), until=_ms(query.until, "until"), before=before,
    )  # fmt: skip
    for m in msgs:
        m["at"] = iso(m["at"])
        m["history"] = [
            {"status": h[0], "at": iso(h[1]), **({"detail": h[2]} if len(h) > 2 else {})}
            for h in m.get("history", [])
        ]
    cursor = base64.urlsafe_b64encode(f"m:{older}".encode()).decode() if older is not None else None
    return json_response({"contact": number, "messages": msgs, "next_cursor": cursor})


def message_cursor(cursor: str) -> int:
    """The sequence number in a messages cursor, or a 422 naming ``cursor``."""
    try:
        kind, seq = base64.urlsafe_b64decode(cursor.encode()).decode().split(":")
        if kind == "m" and seq.isdigit():
            return int(seq)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise Unprocessable("cursor", "is not a cursor this API gave (use next_cursor as it is)")


def _ms(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Unprocessable(name, "must be an ISO 8601 time like 2026-12-01T00:00:00Z") from None
    return int((t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp() * 1000)
