"""The Conversations page: find a contact (by number, name or a field), read its transcript
(each reply with its latency and delivery status), where its conversation stands (flow, node,
results), its consent and the ledger behind it; and a live tail of what turns do, across
contacts, polled from ``/console/api/conversations/tail``.

A contact is named in the console's URLs by a reference (engine/console/masking.py ``seal``),
not by its number, so a viewer's address bar and history hold no number either; an operator
may also type ``/console/conversations/+447700900123``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from engine.api.consent import consent_view
from engine.console import search, tail, transcript
from engine.console.auth import can
from engine.console.masking import load_secret, mask, seal, unseal
from engine.console.render import page_html, render, url
from engine.console.web import services
from engine.conversation import conversations, inbox
from engine.core import contacts, keys
from engine.core.errors import NotFound, Unprocessable
from engine.core.numbers import InvalidNumber, to_e164
from engine.core.ports import Services
from engine.crm import listing

#: Messages a transcript page shows (older ones: the "older" link).
PAGE = 50
#: Contacts a search page shows.
RESULTS = 25
#: Events the tail shows.
TAIL = 40


def name_of(c: contacts.Contact | None) -> str:
    """A contact's name from its fields (name, or first and last name), or ""."""
    if c is None:
        return ""
    f = c.fields
    name = f.get("name") or " ".join(str(f[k]) for k in ("first_name", "last_name") if f.get(k))
    return str(name).strip()


async def link(request: web.Request, number: str) -> str:
    """The console URL of ``number``'s conversation (by reference: no number in it)."""
    return url("/conversations/" + seal(await load_secret(request), number))


async def contact_of(request: web.Request, key: str) -> str:
    """The number a path names: a reference the console made, or (operators) a number. A 404
    that says which, otherwise."""
    number = unseal(await load_secret(request), key)
    if number is not None:
        return number
    try:
        number = to_e164(key, services(request).config.numbers.default_region)
    except InvalidNumber:
        raise NotFound(
            "this is not a link to a contact (nor a phone number)", code="contact_not_found"
        ) from None
    if not can(request, "operator"):  # a viewer finds a number through the search box
        raise NotFound("open contacts from the search or the lists", code="contact_not_found")
    return number


def shown(request: web.Request, number: str) -> str:
    """A number as the request's user may see it in a message."""
    return number if can(request, "operator") else mask(number)


async def known(rt: Services, number: str) -> bool:
    """Whether Parley knows ``number``: a profile, a conversation, messages or an inbox place."""
    shard = keys.shard_of(number, rt.config.engine.shards)
    async with rt.store.redis.pipeline(transaction=False) as pipe:
        for key in (keys.contact, keys.session, keys.message_index, keys.handoff):
            pipe.exists(key(number, shard))
        return any(await pipe.execute())


def unknown(request: web.Request, number: str) -> NotFound:
    """The 404 of a number Parley does not know (masked for a viewer)."""
    why = "nobody with this number has texted or been added"
    return NotFound(f"no contact {shown(request, number)}: {why}", code="contact_not_found")


@dataclass
class ContactView:
    number: str
    contact: contacts.Contact | None
    conversation: dict[str, Any] | None
    consent: dict[str, Any]
    handoff: inbox.Handoff | None
    transcript: transcript.Transcript
    #: When the held conversation expires (its session's TTL), ms; None: no conversation held.
    expires_at: int | None = None
    #: The run's parameters (a journey start's, a return to a flow's), as templates see params.*.
    params: dict[str, Any] | None = None


async def load(request: web.Request, number: str, before: int | None = None) -> ContactView:
    """Everything the contact's page shows; 404 when Parley does not know the number."""
    rt = services(request)
    shards = rt.config.engine.shards
    if not await known(rt, number):
        raise unknown(request, number)
    state = await conversations.load_state(rt.store, shards, number)
    ttl = await rt.store.redis.pttl(keys.session(number, keys.shard_of(number, shards))) if state else -1
    return ContactView(
        number=number,
        contact=await contacts.get(rt.store, shards, number),
        conversation=conversations.describe(state) if state else None,
        consent=await consent_view(rt, number),
        handoff=await inbox.load(rt.store, shards, number),
        transcript=await transcript.transcript(rt.store, shards, number, limit=PAGE, before=before),
        expires_at=rt.clock.now_ms() + ttl if ttl > 0 else None,
        params=(state or {}).get("p") or None,
    )


def _before(request: web.Request) -> int | None:
    raw = request.query.get("before", "")
    if not raw:
        return None
    if not raw.isdigit():
        raise Unprocessable("before", "must be the sequence number the 'older' link gave")
    return int(raw)


async def page(request: web.Request) -> web.Response:
    """``GET /console/conversations``: the search box, its results, and the live tail. A number
    goes straight to its contact (303)."""
    rt = services(request)
    q = request.query.get("q", "").strip()
    ctx: dict[str, Any] = {"page": "conversations", "q": q, "results": None, "says": "", "problem": "",
                           "next_cursor": None}  # fmt: skip
    if q:
        found = search.parse(q, rt.config.numbers.default_region)
        if found.number is not None:
            if not await known(rt, found.number):
                raise unknown(request, found.number)
            raise web.HTTPSeeOther(await link(request, found.number))
        if found.problem:
            ctx["problem"] = found.problem
        else:
            assert found.filter is not None
            cursor = request.query.get("cursor") or None
            listed = await listing.page(
                rt.store, rt.config.engine.shards, found.filter, limit=RESULTS, cursor=cursor, consent=True
            )
            secret = await load_secret(request)
            ctx.update(
                says=found.says,
                next_cursor=listed.next_cursor,
                results=[
                    {
                        "contact": c,
                        "name": name_of(c),
                        "consent": status,
                        "href": url("/conversations/" + seal(secret, c.number)),
                    }
                    for c, status in listed.contacts
                ],
            )
    return await render(request, "conversations.html", **ctx)


async def contact_page(request: web.Request) -> web.Response:
    """``GET /console/conversations/{key}``: one contact."""
    key = request.match_info["key"]
    before = _before(request)
    view = await load(request, await contact_of(request, key), before)
    return await render(
        request, "conversation.html", page="conversations", v=view, key=key, name=name_of(view.contact),
        older_page=before is not None, inbox_href=url("/inbox/" + key),
    )  # fmt: skip


async def transcript_rows(request: web.Request) -> web.Response:
    """``GET /console/api/conversations/{key}/transcript``: the newest transcript rows as HTML
    (the page's own template), for the page to refresh them while it is open."""
    rt = services(request)
    number = await contact_of(request, request.match_info["key"])
    got = await transcript.transcript(rt.store, rt.config.engine.shards, number, limit=PAGE)
    await load_secret(request)
    html = page_html(request, "_transcript.html", {"lines": got.lines})
    return web.json_response({"html": html, "count": len(got.lines)})


async def tail_data(request: web.Request) -> web.Response:
    """``GET /console/api/conversations/tail?since=MS``: the newest outcome events of every
    shard, newest first, each contact masked with a link to its conversation; ``since`` is the
    last answer's ``since`` (events of that instant come again: the page drops the ids it has)."""
    rt = services(request)
    raw = request.query.get("since", "")
    if raw and not raw.isdigit():
        raise Unprocessable("since", "must be the 'since' of the last answer (ms)")
    events = await tail.recent(rt.store, rt.config.engine.shards, limit=TAIL, since=int(raw) if raw else None)
    secret = await load_secret(request)
    rows = [
        {
            "id": e.id, "at": e.at, "kind": e.kind, "flow": e.flow, "summary": e.summary,
            "contact": mask(e.contact), "href": url("/conversations/" + seal(secret, e.contact)),
        }
        for e in events
    ]  # fmt: skip
    since = max((e.ms for e in events), default=int(raw) if raw else 0)
    return web.json_response({"events": rows, "since": since})
