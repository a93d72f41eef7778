"""The Inbox page: contacts handed off to a person (a flow's ``handoff:`` node, or a text that
matched nothing, with ``engine.unmatched: inbox``). An operator claims one, answers it from the
page (through the gate, like every send), closes it or returns it to a flow; a viewer reads the
same pages, numbers masked, without the forms (and gets 403 from the server on any action).

The actions are the /v1/inbox ones (engine/api/inbox.py), taken as the logged-in user; each is
written to the console's audit log (contact by digest, never by number). A form posts, then
the page is shown again (303) with what happened, or with the refusal (404, 409, 422) and the
text typed kept.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engine.api import inbox as actions
from engine.api.schema import validate
from engine.console import transcript
from engine.console.audit import audit
from engine.console.auth import require
from engine.console.masking import load_secret, seal
from engine.console.pages.conversations import contact_of, shown
from engine.console.render import render, url
from engine.console.web import services
from engine.conversation import inbox
from engine.core import keys
from engine.core.errors import ApiError, Conflict, NotFound, Unprocessable
from engine.core.ports import Services
from engine.governance.consent import Consent

#: Contacts a page of the inbox lists.
PAGE = 25
#: Messages the contact's inbox page shows.
MESSAGES = 50
#: What the page says after each action (the ``done`` query parameter).
DONE = {
    "claimed": "Claimed: it is yours to answer.",
    "replied": "Reply queued: it goes out through the gate in the contact's order.",
    "closed": "Closed: the contact's next text goes to the flows again.",
    "returned": "Returned to the flow: it starts in the contact's order, and the inbox closes.",
}


async def page(request: web.Request) -> web.Response:
    """``GET /console/inbox``: handed-off contacts, oldest first, a page at a time."""
    rt = services(request)
    after = None
    cursor = request.query.get("cursor") or None
    if cursor is not None:
        try:
            after = inbox.decode_cursor(cursor)
        except ValueError as exc:
            raise Unprocessable("cursor", str(exc)) from None
    shards = rt.config.engine.shards
    items, more = await inbox.page(rt.store, shards, PAGE, after)
    consents: list[Consent] = []
    if items:
        async with rt.store.redis.pipeline(transaction=False) as pipe:
            for h in items:
                pipe.hgetall(keys.governance(h.number, keys.shard_of(h.number, shards)))
            consents = [Consent.from_hash(raw) for raw in await pipe.execute()]
    secret = await load_secret(request)
    rows = [
        {"h": h, "consent": c, "href": url("/inbox/" + seal(secret, h.number))}
        for h, c in zip(items, consents, strict=True)
    ]
    return await render(
        request, "inbox.html", page="inbox", rows=rows, done=DONE.get(request.query.get("done", ""), ""),
        next_cursor=inbox.encode_cursor(*more) if more else None,
    )  # fmt: skip


async def _contact(
    request: web.Request, number: str, key: str, *, status: int = 200, **more: Any
) -> web.Response:
    rt = services(request)
    shards = rt.config.engine.shards
    h = await inbox.load(rt.store, shards, number)
    if h is None:
        raise NotFound(
            f"{shown(request, number)} is not in the inbox (closed or returned to a flow)",
            code="not_in_inbox",
        )
    raw: Any = await rt.store.redis.hgetall(keys.governance(number, keys.shard_of(number, shards)))
    got = await transcript.transcript(rt.store, shards, number, limit=MESSAGES)
    ctx: dict[str, Any] = {"error": "", "text": "", "done": DONE.get(request.query.get("done", ""), "")}
    ctx.update(more)
    return await render(
        request, "inbox_contact.html", status=status, page="inbox", h=h, consent=Consent.from_hash(raw),
        lines=got.lines, key=key, flows=sorted(rt.flows.flows),
        conversation_href=url("/conversations/" + key), **ctx,
    )  # fmt: skip


async def contact_page(request: web.Request) -> web.Response:
    """``GET /console/inbox/{key}``: the contact in the inbox, its messages, and (operators) the
    forms."""
    key = request.match_info["key"]
    return await _contact(request, await contact_of(request, key), key)


async def _act(request: web.Request, action: str) -> web.Response:
    """Run ``action`` on the contact as the logged-in operator; the page again (303), or the
    refusal on the page with its status."""
    me = require(request, "operator")
    key = request.match_info["key"]
    number = await contact_of(request, key)
    rt = services(request)
    form = await request.post()
    text = str(form.get("text", ""))
    flow = str(form.get("flow", ""))
    digest = keys.number_digest(number)
    try:
        if action == "claim":
            result, holder = await inbox.claim(rt, number, me.name)
            if result == "missing":
                raise NotFound(f"{shown(request, number)} is not in the inbox", code="not_in_inbox")
            if result == "taken":
                raise Conflict(f"claimed by {holder}", code="claimed")
            await audit(request, "inbox.claim", contact=digest)
            done = "claimed"
        elif action == "reply":
            body = validate(actions.ReplyIn, {"operator": me.name, "text": text}, rt)
            await _claim_first(rt, number, me.name)
            _, message_id = await actions.reply(rt, number, me.name, body.text)
            await audit(request, "inbox.reply", contact=digest, message=message_id, chars=len(body.text))
            done = "replied"
        elif action == "close":
            await actions.close(rt, number, me.name)
            await audit(request, "inbox.close", contact=digest)
            done = "closed"
        else:
            if not flow:
                raise Unprocessable("flow", "choose the flow to return the contact to")
            await _claim_first(rt, number, me.name)
            await actions.return_to_flow(rt, number, me.name, flow, {})
            await audit(request, "inbox.return", contact=digest, flow=flow)
            done = "returned"
    except ApiError as exc:
        await audit(request, f"inbox.{action}.refused", contact=digest, code=exc.code)
        if isinstance(exc, NotFound):
            raise
        return await _contact(request, number, key, status=exc.status, error=exc.message, text=text)
    if done in ("closed", "returned"):  # the contact leaves the inbox: back to the list
        raise web.HTTPSeeOther(url(f"/inbox?done={done}"))
    raise web.HTTPSeeOther(url(f"/inbox/{key}?done={done}"))


async def _claim_first(rt: Services, number: str, operator: str) -> None:
    """Answering an open contact claims it (so two people do not answer at once); another's
    claim is 409."""
    result, holder = await inbox.claim(rt, number, operator)
    if result == "taken":
        raise Conflict(f"claimed by {holder}", code="claimed")


async def post_claim(request: web.Request) -> web.Response:
    return await _act(request, "claim")


async def post_reply(request: web.Request) -> web.Response:
    return await _act(request, "reply")


async def post_close(request: web.Request) -> web.Response:
    return await _act(request, "close")


async def post_return(request: web.Request) -> web.Response:
    return await _act(request, "return")
