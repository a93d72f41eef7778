"""Consent and suppression: ``/v1/contacts/{number}/consent`` and ``/v1/suppressions/{number}``.

A change through the API must name its source (``api``, ``import``, ``web``, ``paper``,
``carrier``); ``keyword`` is reserved for STOP/START texts. Every change, whatever its origin,
is appended to the contact's ledger with its cause, in the same transaction as the change.
"""

from __future__ import annotations

import csv
import io
from typing import Annotated, Any, Literal, get_args

from aiohttp import web
from pydantic import BaseModel, Field

from engine.api.common import iso, json_response, number_param, runtime
from engine.api.ports import ApiServices
from engine.api.schema import NUMBER, Answer, Model, Operation, Query, operation, read_body, read_query
from engine.core import keys
from engine.crm import erasure, index
from engine.governance import consent as governance

API_SOURCES = tuple(s for s in governance.SOURCES if s != "keyword")
MAX_NOTE = 500
#: The sources a change through the API may name (engine/governance/consent.py's, without keyword).
Source = Literal["api", "import", "carrier", "web", "paper"]
assert get_args(Source) == API_SOURCES, "Source must list governance.SOURCES without keyword"


class ConsentIn(Model):
    """``PUT /v1/contacts/{number}/consent``."""

    status: Literal["opted_in", "opted_out"]
    source: Source
    note: Annotated[str, Field(max_length=MAX_NOTE)] = ""
    purpose: Annotated[
        Literal["all", "marketing"],
        Field(description="marketing: consent to offers alone (an opt-out keeps service messages)"),
    ] = "all"

    MESSAGES = {
        "status": "must be opted_in or opted_out",
        "source": f"required: one of {', '.join(API_SOURCES)}",
        "note": f"must be a string of at most {MAX_NOTE} characters",
        "purpose": "must be all (every message) or marketing (offers alone)",
    }


class SuppressionIn(Model):
    """``PUT /v1/suppressions/{number}``: the reason is kept (stripped) in the ledger."""

    reason: Annotated[str, Field(min_length=1, max_length=MAX_NOTE, pattern=r"\S")]
    source: Source = "api"

    MESSAGES = {
        "reason": f"required: why this number must not be texted (≤ {MAX_NOTE} chars)",
        "source": f"one of {', '.join(API_SOURCES)}",
    }


class ConsentQuery(Query):
    format: Annotated[Literal["json", "csv"], Field(description="json or csv")] = "json"

    MESSAGES = {"format": "must be json or csv"}


class LedgerEntry(BaseModel):
    at: str
    change: str
    source: str
    cause: str
    event: str | None
    purpose: str = Field("all", description="marketing: a change of the marketing consent alone")


class ConsentView(BaseModel):
    """A contact's consent now and its ledger, oldest first."""

    contact: str
    status: str
    source: str | None
    changed_at: str | None
    suppressed: str | None
    marketing: str = Field(description="opted_in only after an explicit opt-in for marketing")
    marketing_source: str | None
    marketing_changed_at: str | None
    ledger: list[LedgerEntry]
    erased_ledger: str | None = Field(description="the erased contact's hashed ledger, when kept")


ERR = (401, 422, 503)


async def consent_view(rt: ApiServices, number: str) -> dict[str, Any]:
    """Consent now and the ledger, oldest first: the entries kept from an erasure of the contact
    (engine/crm/erasure.py: hashed ledger, ending with its "erased" entry), then the current ones."""
    shard = keys.shard_of(number, rt.config.engine.shards)
    erased = await erasure.erased_ledger_key(rt.store, rt.config.governance.erasure_key, number, shard)
    async with rt.store.redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.governance(number, shard))
        pipe.xrange(erased)
        pipe.xrange(keys.consent_ledger(number, shard))
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
                "purpose": e.get("purpose") or "all",
            }
        )
    return {
        "contact": number,
        "status": c.status,
        "source": c.source or None,
        "changed_at": iso(c.at) if c.at else None,
        "suppressed": c.suppressed or None,
        "marketing": c.marketing,
        "marketing_source": c.marketing_source or None,
        "marketing_changed_at": iso(c.marketing_at) if c.marketing_at else None,
        "ledger": entries,
        "erased_ledger": erased.rsplit("}", 1)[1] if before else None,  # the digest, after the tag
    }


@operation(Operation(
    "get_consent", "consent", "Consent status and its ledger (?format=csv: the ledger as CSV)",
    {200: Answer("status and ledger", ConsentView, more={"text/csv": {"type": "string"}})},
    errors=ERR, params=(NUMBER,), query=ConsentQuery,
))  # fmt: skip
async def get_consent(request: web.Request) -> web.Response:
    """The contact's consent now, and every change that led to it (oldest first);
    ``?format=csv`` gives the ledger alone as CSV, for an audit."""
    rt = runtime(request)
    view = await consent_view(rt, number_param(rt, request.match_info["number"]))
    if read_query(request, ConsentQuery, rt).format == "json":
        return json_response(view)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["contact", "at", "change", "source", "cause", "event", "purpose"])
    for e in view["ledger"]:
        writer.writerow(
            [view["contact"], e["at"], e["change"], e["source"], e["cause"], e["event"] or "", e["purpose"]]
        )
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="consent-{view["contact"]}.csv"'},
    )


@operation(Operation(
    "put_consent", "consent", "Record a consent change with its source",
    {200: Answer("recorded", ConsentView)}, errors=(400, *ERR), params=(NUMBER,), body=ConsentIn,
))  # fmt: skip
async def put_consent(request: web.Request) -> web.Response:
    """Record an opt-in or opt-out from outside the SMS channel (a web form, a call, an import).
    ``purpose: marketing`` changes the consent to offers alone; an opt-out for all purposes
    also withdraws the marketing consent (a later marketing opt-in must be given again)."""
    rt = runtime(request)
    number = number_param(rt, request.match_info["number"])
    body = await read_body(request, ConsentIn, rt)
    status, source, note = body.status, body.source, body.note
    now = rt.clock.now_ms()
    shard = keys.shard_of(number, rt.config.engine.shards)
    change, entry = governance.consent_change(
        status, source, note or f"{source} via API", now, marketing=body.purpose == governance.MARKETING
    )
    async with rt.store.redis.pipeline(transaction=True) as pipe:  # one slot: the contact's shard
        pipe.hset(keys.governance(number, shard), mapping=change)  # type: ignore[arg-type]
        pipe.xadd(keys.consent_ledger(number, shard), entry)  # type: ignore[arg-type]
        await index.execute_with_reindex(rt.store, pipe, number, shard)  # the listing index too
    return json_response(await consent_view(rt, number))


@operation(Operation(
    "suppress_number", "consent", "Suppress a number (nothing is sent to it)",
    {200: Answer("suppressed", ConsentView)}, errors=(400, *ERR), params=(NUMBER,), body=SuppressionIn,
))  # fmt: skip
async def put_suppression(request: web.Request) -> web.Response:
    """Never text this number (whatever its consent) until the suppression is removed."""
    rt = runtime(request)
    number = number_param(rt, request.match_info["number"])
    body = await read_body(request, SuppressionIn, rt)
    reason, source = body.reason, body.source
    now = rt.clock.now_ms()
    shard = keys.shard_of(number, rt.config.engine.shards)
    async with rt.store.redis.pipeline(transaction=True) as pipe:  # one slot: the contact's shard
        pipe.hset(keys.governance(number, shard), "sup", reason.strip())
        pipe.xadd(
            keys.consent_ledger(number, shard),
            {"change": "suppressed", "src": source, "cause": reason.strip(), "at": now},
        )
        await pipe.execute()
    return json_response(await consent_view(rt, number))


@operation(Operation(
    "lift_suppression", "consent", "Lift a suppression",
    {200: Answer("lifted", ConsentView)}, errors=ERR, params=(NUMBER,),
))  # fmt: skip
async def delete_suppression(request: web.Request) -> web.Response:
    rt = runtime(request)
    number = number_param(rt, request.match_info["number"])
    now = rt.clock.now_ms()
    shard = keys.shard_of(number, rt.config.engine.shards)
    async with rt.store.redis.pipeline(transaction=True) as pipe:  # one slot: the contact's shard
        pipe.hdel(keys.governance(number, shard), "sup")
        pipe.xadd(
            keys.consent_ledger(number, shard),
            {"change": "unsuppressed", "src": "api", "cause": "suppression removed via API", "at": now},
        )
        await pipe.execute()
    return json_response(await consent_view(rt, number))
