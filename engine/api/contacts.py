"""``PUT``, ``GET`` and ``DELETE /v1/contacts/{number}``, and ``POST /v1/contacts:import``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engine.api.common import iso, json_response, number_param, read_object, runtime
from engine.core import contacts
from engine.core.errors import BadRequest, NotFound, UnsupportedMediaType
from engine.crm import erasure
from engine.crm.contacts_import import import_contacts

#: Content types the import reads, and the format each means.
IMPORT_TYPES = {
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/json-lines": "jsonl",
    "text/csv": "csv",
}
#: The import reads its body in pieces of this size (never the whole body at once).
CHUNK_BYTES = 256 * 1024


def contact_json(c: contacts.Contact) -> dict[str, Any]:
    return {
        "number": c.number,
        "fields": c.fields,
        "tags": c.tags,
        "language": c.language,
        "timezone": c.timezone,
        "created_at": iso(c.created_at),
        "updated_at": iso(c.updated_at),
    }


async def put_contact(request: web.Request) -> web.Response:
    """Create or replace a contact; 201 when created, 200 when replaced."""
    rt = runtime(request)
    number = number_param(rt, request.match_info["number"])
    body = await read_object(request, {"fields", "tags", "language", "timezone"})
    contact = contacts.Contact(
        number=number,
        fields=contacts.validate_fields(body.get("fields")),
        tags=contacts.validate_tags(body.get("tags")),
        language=contacts.validate_language(body.get("language")),
        timezone=contacts.validate_timezone(body.get("timezone")),
    )
    stored, created = await contacts.upsert(rt.store, contact, rt.clock.now_ms())
    return json_response(contact_json(stored), 201 if created else 200)


async def get_contact(request: web.Request) -> web.Response:
    rt = runtime(request)
    number = number_param(rt, request.match_info["number"])
    c = await contacts.get(rt.store, number)
    if c is None:
        raise NotFound(f"no contact {number}", code="contact_not_found")
    return json_response(contact_json(c))


async def delete_contact(request: web.Request) -> web.Response:
    """Erase everything held about the number (engine/crm/erasure.py); 204, or 404 when nothing is."""
    rt = runtime(request)
    number = number_param(rt, request.match_info["number"])
    erased = await erasure.forget(
        rt.store,
        number,
        shards=rt.config.engine.shards,
        key=rt.config.governance.erasure_key,
        now_ms=rt.clock.now_ms(),
        source="api",
    )
    if not erased:
        raise NotFound(f"no contact {number}", code="contact_not_found")
    return web.Response(status=204)


async def post_import(request: web.Request) -> web.Response:
    """Import contacts from the body (JSONL or CSV by Content-Type), read as it arrives.

    ``request.content`` is read in chunks, which ``client_max_size`` does not limit (only
    ``read()``, ``json()`` and ``post()`` check it): an import may be far larger than
    ``http.max_body_bytes``, and holds one batch of rows in memory, never the body."""
    rt = runtime(request)
    if not request.body_exists:
        raise BadRequest("body is empty; send the file (CSV with a header row, or JSONL)")
    fmt = IMPORT_TYPES.get(request.content_type)
    if fmt is None:
        wanted = " or ".join(sorted(IMPORT_TYPES))
        raise UnsupportedMediaType(f"send the file as Content-Type {wanted} (got {request.content_type!r})")
    report = await import_contacts(
        rt.store,
        request.content.iter_chunked(CHUNK_BYTES),
        fmt,
        default_region=rt.config.numbers.default_region,
        now_ms=rt.clock.now_ms,
    )
    return json_response(report.as_json())
