"""The inbox: contacts handed off to a person (engine/conversation/inbox.py) -- list, read, claim,
reply, close, return to a flow."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from engine.api.common import iso, json_response, number_param, runtime
from engine.api.ports import ApiServices
from engine.api.schema import NUMBER, Answer, Model, Operation, Query, operation, read_body, read_query
from engine.conversation import conversations, inbox
from engine.conversation.turn import missing_fields
from engine.core import contacts, keys
from engine.core.errors import Conflict, NotFound, Unprocessable
from engine.governance.consent import Consent

MAX_LIMIT = 100
#: The messages ``GET /v1/inbox/{number}`` shows (the newest; the rest: /v1/messages).
MESSAGES = 50
OPERATOR = Field(
    pattern="^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$",
    description="who acts: an operator's name or id (letters, digits, . _ @ + -; up to 64)",
)
OPERATOR_SAYS = "must be an operator's name: letters, digits, . _ @ + - (up to 64 characters)"


class InboxQuery(Query):
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT, description="at most this many (20)")] = 20
    cursor: Annotated[str | None, Field(min_length=1, description="next_cursor of the previous page")] = None

    MESSAGES = {"limit": f"must be a whole number between 1 and {MAX_LIMIT}"}


class OperatorIn(Model):
    """Who claims or closes."""

    operator: Annotated[str, OPERATOR]

    MESSAGES = {"operator": OPERATOR_SAYS}


class ReplyIn(Model):
    """A person's reply to the contact."""

    operator: Annotated[str, OPERATOR]
    text: Annotated[str, Field(min_length=1, max_length=1600, description="the SMS text")]

    MESSAGES = {"operator": OPERATOR_SAYS, "text": "must be text of 1 to 1600 characters"}


class ReturnIn(Model):
    """Hand the contact back to a flow."""

    operator: Annotated[str, OPERATOR]
    flow: Annotated[str, Field(pattern="^[a-z][a-z0-9_]*$", description="the flow to start")]
    params: Annotated[
        dict[str, Any],
        Field(
            description="available to templates as params.*",
            json_schema_extra={"not": {"required": ["_start"]}},
        ),
    ] = {}

    MESSAGES = {"operator": OPERATOR_SAYS, "flow": "must name a flow (lower_snake_case)"}


class HandoffView(BaseModel):
    contact: str
    status: Literal["open", "claimed"]
    handed_off_at: str
    reason: str = Field(description="the handoff node's reason, or unmatched")
    flow: str | None = Field(description="the flow it came from (null: a text that matched none)")
    operator: str | None
    claimed_at: str | None
    texts: int = Field(description="texts from the contact since it was handed off")
    last_text_at: str | None
    last_reply_at: str | None
    consent: str = Field(description="opted_in, opted_out, unknown")
    suppressed: bool


class InboxPage(BaseModel):
    items: list[HandoffView]
    next_cursor: str | None


class InboxContact(HandoffView):
    messages: list[dict[str, Any]] = Field(description="the newest messages, in and out, oldest first")


class Claimed(BaseModel):
    contact: str
    operator: str
    status: Literal["claimed", "already_yours"]


class Accepted(BaseModel):
    contact: str
    event_id: str = Field(description="the action's entry on the contact's stream (S/ms-seq)")
    message_id: str | None = Field(default=None, description="the reply's message id (GET /v1/messages)")


ERR = (401, 422, 503)


def _view(h: inbox.Handoff, consent: Consent) -> dict[str, Any]:
    return {
        "contact": h.number, "status": h.status, "handed_off_at": iso(h.at), "reason": h.reason,
        "flow": h.flow or None, "operator": h.operator or None, "claimed_at": iso(h.claimed_at),
        "texts": h.texts, "last_text_at": iso(h.last_text_at), "last_reply_at": iso(h.last_reply_at),
        "consent": consent.status, "suppressed": bool(consent.suppressed),
    }  # fmt: skip


async def _consents(rt: ApiServices, numbers: list[str]) -> list[Consent]:
    shards = rt.config.engine.shards
    async with rt.store.redis.pipeline(transaction=False) as pipe:
        for n in numbers:
            pipe.hgetall(keys.governance(n, keys.shard_of(n, shards)))
        return [Consent.from_hash(raw) for raw in await pipe.execute()]


async def _held(rt: ApiServices, number: str, operator: str) -> inbox.Handoff:
    """The contact's place in the inbox, if ``operator`` may act on it: 404 when it is not in the
    inbox, 409 when another person claimed it."""
    h = await inbox.load(rt.store, rt.config.engine.shards, number)
    if h is None:
        raise NotFound(f"{number} is not in the inbox", code="not_in_inbox")
    if h.status == "claimed" and h.operator and h.operator != operator:
        raise Conflict(f"{number} is claimed by {h.operator}", code="claimed")
    return h


@operation(Operation(
    "list_inbox", "inbox", "Contacts handed off to a person, oldest first (cursor pages)",
    {200: Answer("a page", InboxPage)}, errors=ERR, query=InboxQuery,
))  # fmt: skip
async def list_inbox(request: web.Request) -> web.Response:
    """Handed-off contacts, oldest first; ``next_cursor`` continues (null at the end)."""
    rt = runtime(request)
    query = read_query(request, InboxQuery, rt)
    after = None
    if query.cursor is not None:
        try:
            after = inbox.decode_cursor(query.cursor)
        except ValueError as exc:
            raise Unprocessable("cursor", str(exc)) from None
    items, more = await inbox.page(rt.store, rt.config.engine.shards, query.limit, after)
    consents = await _consents(rt, [h.number for h in items]) if items else []
    return json_response({
        "items": [_view(h, c) for h, c in zip(items, consents, strict=True)],
        "next_cursor": inbox.encode_cursor(*more) if more else None,
    })  # fmt: skip


@operation(Operation(
    "get_inbox_contact", "inbox", "A handed-off contact with its newest messages",
    {200: Answer("the contact in the inbox", InboxContact)}, errors=(404, *ERR), params=(NUMBER,),
))  # fmt: skip
async def get_inbox_contact(request: web.Request) -> web.Response:
    """Where the contact is in the inbox, its consent, and its newest messages (texts kept while
    handed off, replies with their status)."""
    rt = runtime(request)
    number = number_param(rt, request.match_info["number"])
    shards = rt.config.engine.shards
    h = await inbox.load(rt.store, shards, number)
    if h is None:
        raise NotFound(f"{number} is not in the inbox", code="not_in_inbox")
    (consent,) = await _consents(rt, [number])
    msgs = await conversations.recent_messages(rt.store, shards, number, MESSAGES)
    for m in msgs:
        m["at"] = iso(m["at"])
        m["history"] = [{"status": x[0], "at": iso(x[1])} for x in m.get("history", [])]
    return json_response({**_view(h, consent), "messages": msgs})


@operation(Operation(
    "claim_inbox_contact", "inbox", "Claim a handed-off contact (409 if someone else has)",
    {200: Answer("claimed", Claimed)}, errors=(400, 404, 409, *ERR), params=(NUMBER,), body=OperatorIn,
))  # fmt: skip
async def claim_inbox_contact(request: web.Request) -> web.Response:
    """The first claim wins; claiming again by the same operator changes nothing; another's is 409."""
    rt = runtime(request)
    number = number_param(rt, request.match_info["number"])
    body = await read_body(request, OperatorIn, rt)
    status, holder = await inbox.claim(rt, number, body.operator)
    if status == "missing":
        raise NotFound(f"{number} is not in the inbox", code="not_in_inbox")
    if status == "taken":
        raise Conflict(f"{number} is claimed by {holder}", code="claimed")
    out = "claimed" if status == "ok" else "already_yours"
    return json_response({"contact": number, "operator": holder, "status": out})


@operation(Operation(
    "reply_inbox_contact", "inbox", "A person's reply: sent through the gate, in the contact's order",
    {202: Answer("queued for the contact's turn", Accepted)}, errors=(400, 404, 409, *ERR), params=(NUMBER,),
    body=ReplyIn,
))  # fmt: skip
async def reply_inbox_contact(request: web.Request) -> web.Response:
    """Queue the reply on the contact's stream (202): its turn sends it through the same gate as
    every send (consent, suppression, caps, quiet hours). 409 ``opted_out`` or ``suppressed``
    when the contact cannot be texted now; 409 ``claimed`` when another person claimed it."""
    rt = runtime(request)
    number = number_param(rt, request.match_info["number"])
    body = await read_body(request, ReplyIn, rt)
    event_id, message_id = await reply(rt, number, body.operator, body.text)
    return json_response({"contact": number, "event_id": event_id, "message_id": message_id}, 202)


@operation(Operation(
    "close_inbox_contact", "inbox", "Take a contact out of the inbox (in the contact's order)",
    {202: Answer("queued for the contact's turn", Accepted)}, errors=(400, 404, 409, *ERR), params=(NUMBER,),
    body=OperatorIn,
))  # fmt: skip
async def close_inbox_contact(request: web.Request) -> web.Response:
    """Close: the contact leaves the inbox after anything queued before (202); its next text is
    a flow's again."""
    rt = runtime(request)
    number = number_param(rt, request.match_info["number"])
    body = await read_body(request, OperatorIn, rt)
    return json_response({"contact": number, "event_id": await close(rt, number, body.operator)}, 202)


@operation(Operation(
    "return_inbox_contact", "inbox", "Hand a contact back to a flow (it starts, the inbox closes)",
    {202: Answer("queued for the contact's turn", Accepted)}, errors=(400, 404, 409, *ERR), params=(NUMBER,),
    body=ReturnIn,
))  # fmt: skip
async def return_inbox_contact(request: web.Request) -> web.Response:
    """Start ``flow`` for the contact and close its place in the inbox, in one turn (202). 422
    when the flow is not loaded or the contact lacks a field the flow requires."""
    rt = runtime(request)
    number = number_param(rt, request.match_info["number"])
    body = await read_body(request, ReturnIn, rt)
    event_id = await return_to_flow(rt, number, body.operator, body.flow, body.params)
    return json_response({"contact": number, "event_id": event_id}, 202)


# The actions, as the handlers above and the console's Inbox page (engine/console) call them.


async def reply(rt: ApiServices, number: str, operator: str, text: str) -> tuple[str, str]:
    """Queue ``operator``'s reply on the contact's stream: its turn sends it through the same gate
    as every send (consent, suppression, caps, quiet hours). Returns (event id ``S/ms-seq``, the
    reply's message id). 404 ``not_in_inbox``; 409 ``claimed`` (by another), ``opted_out`` or
    ``suppressed`` (the contact cannot be texted now)."""
    await _held(rt, number, operator)
    (consent,) = await _consents(rt, [number])
    if consent.suppressed:
        raise Conflict(f"{number} is suppressed ({consent.suppressed}): nothing is sent", code="suppressed")
    if consent.silenced:
        raise Conflict(f"{number} opted out: nothing is sent", code="opted_out")
    entry = await inbox.enqueue(rt, number, "reply", operator, text=text)
    shard = keys.shard_of(number, rt.config.engine.shards)
    return f"{shard}/{entry}", inbox.reply_id(shard, entry)


async def close(rt: ApiServices, number: str, operator: str) -> str:
    """Queue the contact's leaving the inbox (after anything queued before); its event id."""
    await _held(rt, number, operator)
    entry = await inbox.enqueue(rt, number, "close", operator)
    return f"{keys.shard_of(number, rt.config.engine.shards)}/{entry}"


async def return_to_flow(
    rt: ApiServices, number: str, operator: str, flow_name: str, params: dict[str, Any]
) -> str:
    """Queue starting ``flow_name`` for the contact and closing its place in the inbox, in one
    turn; its event id. 422 ``flow_not_found`` or ``missing_fields`` (a field the flow requires)."""
    if "_start" in params:
        raise Unprocessable("params", "must be an object (without _start, which is Parley's)")
    await _held(rt, number, operator)
    flow = rt.flows.get(flow_name)
    if flow is None:
        loaded = ", ".join(sorted(rt.flows.flows)) or "none"
        raise Unprocessable("flow", f"no flow {flow_name!r} (loaded: {loaded})", code="flow_not_found")
    contact = await contacts.get(rt.store, rt.config.engine.shards, number) or contacts.Contact(number)
    lacking = missing_fields(flow, contact)
    if lacking:
        needs = ", ".join(lacking)
        raise Unprocessable("flow", f"{flow_name} needs contact fields {needs}", code="missing_fields")
    entry = await inbox.enqueue(rt, number, "return", operator, flow=flow_name, params=params)
    return f"{keys.shard_of(number, rt.config.engine.shards)}/{entry}"
