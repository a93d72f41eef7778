"""Consent and suppression: ``/v1/contacts/{number}/consent`` and ``/v1/suppressions/{number}``.

A change through the API must name its source (``api``, ``import``, ``web``, ``paper``,
``carrier``); ``keyword`` is reserved for STOP/START texts. Every change, whatever its origin,
is appended to the contact's ledger with its cause, in the same transaction as the change.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from aiohttp import web

from engine.api.common import iso, json_response, number_param, read_object, runtime
from engine.api.ports import ApiServices
from engine.core import keys
from engine.core.errors import Unprocessable
from engine.crm import erasure
from engine.governance import consent as governance

API_SOURCES = tuple(s for s in governance.SOURCES if s != "keyword")
MAX_NOTE = 500


async def _view(rt: ApiServices, number: str) -> dict[str, Any]:
    """Consent now and the ledger, oldest first: the entries kept from an erasure of the contact
    (engine/crm/erasure.py: hashed ledger, ending with its "erased" entry), then the current ones."""
    erased = await erasure.erased_ledger_key(rt.store, rt.config.governance.erasure_key, number)
    async with rt.store.redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.governance(number))
        pipe.xrange(erased)
        pipe.xrange(keys.consent_ledger(number))
        current, before, ledger = await pipe.execute()
    c = governance.Consent.from_hash(current)
    entries = []
    for entry_id, f in [*before, *ledger]:
        e = {k.decode(): v.decode() for k, v in f.items()}
        entries.append(
            {
                "at": iso(int(e.get("at", "0")) or int(entry_id.split(b"-")[0])),
                "change": e.get("cs") or e.get("change", ""),
                "source": e.get("src", ""),
                "cause": e.get("cause", ""),
                "event": e.get("event") or None,
            }
        )
    return {
        "contact": number,
        "status": c.status,
        "source": c.source or None,
        "changed_at": iso(c.at) if c.at else None,
        "suppressed": c.suppressed or None,
        "ledger": entries,
        "erased_ledger": erased.rsplit(":", 1)[1] if before else None,
    }


async def get_consent(request: web.Request) -> web.Response:
    """The contact's consent now, and every change that led to it (oldest first);
    ``?format=csv`` gives the ledger alone as CSV, for an audit."""
    rt = runtime(request)
    view = await _view(rt, number_param(rt, request.match_info["number"]))
    fmt = request.query.get("format", "json")
    if fmt == "json":
        return json_response(view)
    if fmt != "csv":
        raise Unprocessable("format", "must be json or csv")
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["contact", "at", "change", "source", "cause", "event"])
    for e in view["ledger"]:
        writer.writerow([view["contact"], e["at"], e["change"], e["source"], e["cause"], e["event"] or ""])
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="consent-{view["contact"]}.csv"'},
    )


def _note(body: dict[str, Any]) -> str:
    note = body.get("note", "")
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise Unprocessable("note", f"must be a string of at most {MAX_NOTE} characters")
    return note


async def put_consent(request: web.Request) -> web.Response:
    """Record an opt-in or opt-out from outside the SMS channel (a web form, a call, an import)."""
    rt = runtime(request)
    number = number_param(rt, request.match_info["number"])
    body = await read_object(request, {"status", "source", "note"})
    status = body.get("status")
    if status not in (governance.OPTED_IN, governance.OPTED_OUT):
        raise Unprocessable("status", "must be opted_in or opted_out")
    source = body.get("source")
    if source not in API_SOURCES:
        raise Unprocessable("source", f"required: one of {', '.join(API_SOURCES)}")
    note = _note(body)
    now = rt.clock.now_ms()
    async with rt.store.redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.governance(number), mapping={"cs": status, "src": source, "at": now})
        pipe.xadd(
            keys.consent_ledger(number),
            {"cs": status, "src": source, "cause": note or f"{source} via API", "at": now},
        )
        await pipe.execute()
    return json_response(await _view(rt, number))


async def put_suppression(request: web.Request) -> web.Response:
    """Never text this number (whatever its consent) until the suppression is removed."""
    rt = runtime(request)
    number = number_param(rt, request.match_info["number"])
    body = await read_object(request, {"reason", "source"})
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_NOTE:
        raise Unprocessable("reason", f"required: why this number must not be texted (≤ {MAX_NOTE} chars)")
    source = body.get("source", "api")
    if source not in API_SOURCES:
        raise Unprocessable("source", f"one of {', '.join(API_SOURCES)}")
    now = rt.clock.now_ms()
    async with rt.store.redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.governance(number), "sup", reason.strip())
        pipe.xadd(
            keys.consent_ledger(number),
            {"change": "suppressed", "src": source, "cause": reason.strip(), "at": now},
        )
        await pipe.execute()
    return json_response(await _view(rt, number))


async def delete_suppression(request: web.Request) -> web.Response:
    rt = runtime(request)
    number = number_param(rt, request.match_info["number"])
    now = rt.clock.now_ms()
    async with rt.store.redis.pipeline(transaction=True) as pipe:
        pipe.hdel(keys.governance(number), "sup")
        pipe.xadd(
            keys.consent_ledger(number),
            {"change": "unsuppressed", "src": "api", "cause": "suppression removed via API", "at": now},
        )
        await pipe.execute()
    return json_response(await _view(rt, number))
