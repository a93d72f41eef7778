"""``GET /v1/contacts`` (search, a page at a time), ``GET /v1/contacts:export`` (every match,
streamed), ``GET /v1/flows`` and ``GET /v1/starts``: lists with an opaque cursor
(``limit``, ``cursor``; the answer's ``next_cursor``, null on the last page)."""

from __future__ import annotations

import base64
import binascii
import csv
import datetime as dt
import hashlib
import io
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, Field

from engine.api.common import iso, json_response, runtime
from engine.api.contacts import Contact, contact_json
from engine.api.ports import ApiServices
from engine.api.schema import Answer, Operation, Query, operation, read_query
from engine.core.errors import Unprocessable
from engine.crm import listing, segments, starts_index
from engine.governance.consent import STATUSES

assert STATUSES == ("opted_in", "opted_out", "unknown"), "ContactFilters.consent lists them"

MAX_LIMIT = 500
#: Rows an export writes to the socket at a time, and reads from Redis at a time.
ROWS_PER_WRITE = 250
EXPORT_PAGE = 250
LIMIT = Annotated[int, Field(ge=1, le=MAX_LIMIT, description="at most this many (50)")]
#: What next_cursor looks like (so a URL with one stays within the server's line limit).
CURSOR_PATTERN = "^[A-Za-z0-9_-]{1,200}$"
CURSOR = Annotated[str | None, Field(pattern=CURSOR_PATTERN, description="next_cursor of the previous page")]
WHEN = Annotated[str | None, Field(json_schema_extra={"format": "date-time"})]
ERR = (401, 422, 503)
#: The longest ``where`` (a URL's line must stay under the server's 8,190 bytes, percent-encoded).
MAX_WHERE = 500
TAG = "[A-Za-z0-9_-]{1,64}"


class ContactFilters(Query):
    """What ``GET /v1/contacts`` and ``GET /v1/contacts:export`` keep (every given filter holds)."""

    where: Annotated[
        str | None,
        Field(
            max_length=MAX_WHERE,
            description="a JSON list of conditions on contact fields, the flows' when: syntax: "
            '[{"field": "contact.city", "equals": "Leeds"}]',
        ),
    ] = None
    tags: Annotated[
        str | None,
        Field(pattern=f"^{TAG}(,{TAG}){{0,19}}$", description="tags, all held: vip,newsletter"),
    ] = None
    consent: Annotated[
        Literal["opted_in", "opted_out", "unknown"] | None, Field(description="the consent status")
    ] = None
    created_since: WHEN = None
    updated_since: Annotated[
        str | None,
        Field(
            json_schema_extra={"format": "date-time"},
            description="changed at or after; the list is then ordered by the last change",
        ),
    ] = None
    segment: Annotated[
        str | None, Field(pattern=segments.NAME_RE.pattern, description="a saved segment's name")
    ] = None

    MESSAGES = {
        "where": 'must be a JSON list of conditions like [{"field": "contact.city", "equals": "Leeds"}]',
        "tags": "must be tags separated by commas (letters, digits, _ and -; at most 20)",
        "consent": f"must be one of {', '.join(STATUSES)}",
        "created_since": "must be an ISO 8601 time like 2026-12-01T00:00:00Z",
        "updated_since": "must be an ISO 8601 time like 2026-12-01T00:00:00Z",
        "segment": "must be a segment name (letters, digits, _ and -)",
    }


class ContactsQuery(ContactFilters):
    limit: LIMIT = 50
    cursor: CURSOR = None

    MESSAGES = {
        **ContactFilters.MESSAGES,
        "limit": f"must be a whole number between 1 and {MAX_LIMIT}",
        "cursor": "must be the next_cursor of the previous page",
    }


class ExportQuery(ContactFilters):
    format: Annotated[Literal["jsonl", "csv"], Field(description="jsonl (default) or csv")] = "jsonl"

    MESSAGES = {**ContactFilters.MESSAGES, "format": "must be jsonl or csv"}


class ContactPage(BaseModel):
    contacts: list[Contact]
    next_cursor: str | None


def _time(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Unprocessable(name, "must be an ISO 8601 time like 2026-12-01T00:00:00Z") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return max(0, int(t.timestamp() * 1000))


async def _filter(rt: ApiServices, q: ContactFilters) -> listing.ContactFilter:
    where: Any = []
    if q.where is not None:
        try:
            where = orjson.loads(q.where)
        except orjson.JSONDecodeError:
            raise Unprocessable("where", ContactFilters.MESSAGES["where"]) from None
        if not isinstance(where, list):
            raise Unprocessable("where", ContactFilters.MESSAGES["where"])
    own = listing.ContactFilter(
        segments.compile_where(where, "where"),
        tuple(dict.fromkeys(q.tags.split(","))) if q.tags else (),
        q.consent,
        _time(q.created_since, "created_since"),
        _time(q.updated_since, "updated_since"),
    )
    if q.segment is None:
        return own
    return (await segments.need(rt.store, q.segment)).filter().also(own)


@operation(Operation(
    "list_contacts", "contacts",
    "Search contacts: conditions on fields, tags, consent, created or updated since; a page at a time",
    {200: Answer("a page of contacts", ContactPage)}, errors=(404, *ERR), query=ContactsQuery,
))  # fmt: skip
async def list_contacts(request: web.Request) -> web.Response:
    """A page of the contacts every filter keeps, oldest first (engine/crm/listing.py)."""
    rt = runtime(request)
    q = read_query(request, ContactsQuery, rt)
    listed = await listing.page(
        rt.store, rt.config.engine.shards, await _filter(rt, q), limit=q.limit, cursor=q.cursor
    )
    return json_response(
        {"contacts": [contact_json(c) for c, _ in listed.contacts], "next_cursor": listed.next_cursor}
    )


#: An export's CSV columns (the contact's fields are one JSON object, in the last column).
CSV_COLUMNS = ("number", "language", "timezone", "tags", "consent", "created_at", "updated_at", "fields")
STRING = {"type": "string"}


@operation(Operation(
    "export_contacts", "contacts", "Every contact the filters keep, streamed as JSONL or CSV",
    {200: Answer("the contacts", STRING, "application/x-ndjson", more={"text/csv": STRING})},
    errors=(404, *ERR), query=ExportQuery,
))  # fmt: skip
async def export_contacts(request: web.Request) -> web.StreamResponse:
    """Every matching contact, read from the listing index a page at a time and written as it is
    read: memory holds one page, whatever the number of contacts."""
    rt = runtime(request)
    q = read_query(request, ExportQuery, rt)
    f = await _filter(rt, q)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8" if q.format == "csv" else "application/x-ndjson",
            "Content-Disposition": f'attachment; filename="contacts.{q.format}"',
        }
    )
    await resp.prepare(request)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if q.format == "csv":
        writer.writerow(CSV_COLUMNS)
    n = 0
    shards = rt.config.engine.shards
    async for c, status in listing.every(rt.store, shards, f, batch=EXPORT_PAGE, consent=True):
        row = {**contact_json(c), "consent": status}
        if q.format == "jsonl":
            buf.write(orjson.dumps(row).decode() + "\n")
        else:
            writer.writerow([
                c.number, c.language or "", c.timezone or "", ";".join(c.tags), status,
                row["created_at"], row["updated_at"], orjson.dumps(c.fields).decode(),
            ])  # fmt: skip
        n += 1
        if n % ROWS_PER_WRITE == 0:
            await resp.write(buf.getvalue().encode())
            buf.seek(0)
            buf.truncate()
    await resp.write(buf.getvalue().encode())
    await resp.write_eof()
    return resp


# -- flows ----------------------------------------------------------------------------------


class FlowsQuery(Query):
    name: Annotated[str | None, Field(max_length=200, description="names starting with this")] = None
    limit: LIMIT = 50
    cursor: CURSOR = None

    MESSAGES = {
        "limit": f"must be a whole number between 1 and {MAX_LIMIT}",
        "cursor": "must be the next_cursor of the previous page",
    }


class FlowItem(BaseModel):
    name: str
    version: int
    digest: str
    description: str
    triggers: list[str]
    status: Literal["valid"] = Field(description="a loaded flow passed validation (reloads: all or none)")
    file: Literal["unchanged", "changed", "missing"] = Field(
        description="the file now: changed means a reload would take a new version (checked then)"
    )


class FlowPage(BaseModel):
    flows: list[FlowItem]
    next_cursor: str | None


def _opaque(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unopaque(cursor: str, check: str = "") -> str:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith(check) or not text:
        raise Unprocessable("cursor", "is not a cursor this API gave (use next_cursor as it is)")
    return text[len(check) :]


def _file_status(source: str, digest: str) -> str:
    try:
        text = Path(source).read_text()
    except OSError:
        return "missing"
    return "unchanged" if hashlib.blake2b(text.encode(), digest_size=6).hexdigest() == digest else "changed"


@operation(Operation(
    "list_flows", "flows", "The loaded flows: name, version, digest, validation status; by name",
    {200: Answer("a page of flows", FlowPage)}, errors=ERR, query=FlowsQuery,
))  # fmt: skip
async def list_flows(request: web.Request) -> web.Response:
    """The flows in use, by name; ``file`` says whether the file changed since it was loaded."""
    rt = runtime(request)
    q = read_query(request, FlowsQuery, rt)
    after = _unopaque(q.cursor, "f:") if q.cursor else ""
    names = sorted(n for n in rt.flows.flows if n > after and n.startswith(q.name or ""))
    shown = names[: q.limit]
    items = []
    for n in shown:
        f = rt.flows.flows[n]
        items.append({
            "name": f.name, "version": f.version, "digest": f.digest, "description": f.description,
            "triggers": f.triggers, "status": "valid", "file": _file_status(f.source, f.digest),
        })  # fmt: skip
    more = len(names) > q.limit
    return json_response({"flows": items, "next_cursor": _opaque(f"f:{shown[-1]}") if more else None})


# -- starts ---------------------------------------------------------------------------------


class StartsQuery(Query):
    flow: Annotated[str | None, Field(max_length=200, description="only this flow's starts")] = None
    status: Annotated[
        Literal["queued", "scheduled", "cancelled"] | None,
        Field(description="queued, scheduled (some wait for send_at) or cancelled"),
    ] = None
    limit: LIMIT = 50
    cursor: CURSOR = None

    MESSAGES = {
        "status": f"must be one of {', '.join(starts_index.STATUSES)}",
        "limit": f"must be a whole number between 1 and {MAX_LIMIT}",
        "cursor": "must be the next_cursor of the previous page",
    }


class StartItem(BaseModel):
    start: str
    flow: str
    at: Annotated[str, Field(json_schema_extra={"format": "date-time"})]
    status: str
    experiment: str | None
    requested: int
    queued: int
    scheduled: int


class StartPage(BaseModel):
    starts: list[StartItem]
    next_cursor: str | None


@operation(Operation(
    "list_starts", "journeys", "Journey starts of the last 90 days, newest first, by flow and status",
    {200: Answer("a page of starts", StartPage)}, errors=ERR, query=StartsQuery,
))  # fmt: skip
async def list_starts(request: web.Request) -> web.Response:
    """Journey starts, newest first (engine/crm/starts_index.py)."""
    rt = runtime(request)
    q = read_query(request, StartsQuery, rt)
    position = _unopaque(q.cursor, "s:") if q.cursor else None
    found, last = await starts_index.page(
        rt.store, flow=q.flow, status=q.status, limit=q.limit, after=position
    )
    items = [{**s, "at": iso(s["at"])} for s in found]
    return json_response({"starts": items, "next_cursor": _opaque(f"s:{last}") if last else None})
