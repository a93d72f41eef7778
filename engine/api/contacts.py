"""``PUT`` and ``GET /v1/contacts/{number}``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engine import contacts
from engine.api.common import iso, json_response, number_param, read_object, runtime
from engine.errors import NotFound


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
