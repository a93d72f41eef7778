"""``PUT``, ``GET`` and ``DELETE /v1/contacts/{number}``, and ``POST /v1/contacts:import``."""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import AfterValidator, BaseModel, Field, WithJsonSchema

from engine.api.common import iso, json_response, number_param, runtime
from engine.api.schema import NUMBER, Answer, Model, Operation, PhoneNumber, operation, read_body
from engine.core import contacts
from engine.core.errors import BadRequest, NotFound, UnsupportedMediaType
from engine.crm import campaigns, erasure
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


_VALUE = {
    "anyOf": [
        {"type": "string", "maxLength": contacts.MAX_VALUE_CHARS},
        {"type": ["number", "boolean", "null"]},
    ]
}

# A contact's fields, tags, language and time zone are checked by engine/core/contacts.py (the import
# checks its rows with the same functions, and their wording names the field: ``fields.a``);
# each schema below says what that function accepts, from the same constants.
Fields = Annotated[
    Any,
    AfterValidator(contacts.validate_fields),
    WithJsonSchema({
        "type": ["object", "null"],
        "description": "CRM fields by name; null or left out: none",
        "maxProperties": contacts.MAX_FIELDS,
        "propertyNames": {
            "pattern": contacts.FIELD_NAME_RE.pattern,
            "not": {"enum": sorted(contacts.RESERVED_FIELDS)},
        },
        "additionalProperties": {"oneOf": [_VALUE, {"type": "array", "items": _VALUE}]},
    }),
]  # fmt: skip
Tags = Annotated[
    Any,
    AfterValidator(contacts.validate_tags),
    WithJsonSchema({
        "type": ["array", "null"],
        "maxItems": contacts.MAX_TAGS,
        "items": {"type": "string", "pattern": contacts.TAG_RE.pattern},
    }),
]  # fmt: skip
Language = Annotated[
    Any,
    AfterValidator(contacts.validate_language),
    WithJsonSchema({
        "type": ["string", "null"], "pattern": contacts.LANGUAGE_RE.pattern, "examples": ["en", "pt-BR"]
    }),
]  # fmt: skip
TimeZone = Annotated[
    Any,
    AfterValidator(contacts.validate_timezone),
    WithJsonSchema({
        "description": "an IANA time zone name (the time zone database's list)",
        "anyOf": [{"enum": sorted(contacts.time_zones())}, {"type": "null"}],
        "examples": ["Europe/London"],
    }),
]  # fmt: skip


class ContactIn(Model):
    """``PUT /v1/contacts/{number}``: the contact, replaced whole."""

    fields: Fields = {}
    tags: Tags = []
    language: Language = None
    timezone: TimeZone = None


class Contact(BaseModel):
    """A contact as the API answers it."""

    number: PhoneNumber
    fields: dict[str, Any]
    tags: list[str]
    language: str | None
    timezone: str | None
    created_at: Annotated[str, Field(json_schema_extra={"format": "date-time"})]
    updated_at: Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class RowError(BaseModel):
    row: int
    field: str | None
    message: str


class ImportReport(BaseModel):
    """What an import did (engine/crm/contacts_import.py): at most 1000 row errors are listed."""

    rows: int
    created: int
    updated: int
    failed: int
    errors: Annotated[list[RowError], Field(max_length=1000)]
    errors_truncated: bool


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


ERR = (401, 422, 503)


@operation(Operation(
    "put_contact", "contacts", "Create or replace a contact (the CRM is the source of truth)",
    {200: Answer("replaced", Contact), 201: Answer("created", Contact)},
    errors=(400, *ERR), params=(NUMBER,), body=ContactIn,
))  # fmt: skip
async def put_contact(request: web.Request) -> web.Response:
    """Create or replace a contact; 201 when created, 200 when replaced."""
    rt = runtime(request)
    number = number_param(rt, request.match_info["number"])
    body = await read_body(request, ContactIn, rt)
    contact = contacts.Contact(
        number=number,
        fields=body.fields,
        tags=body.tags,
        language=body.language,
        timezone=body.timezone,
    )
    stored, created = await contacts.upsert(rt.store, rt.config.engine.shards, contact, rt.clock.now_ms())
    await campaigns.schedule(rt, rt.campaigns, [stored])
    return json_response(contact_json(stored), 201 if created else 200)


@operation(Operation(
    "get_contact", "contacts", "Read a contact",
    {200: Answer("the contact", Contact)}, errors=(404, *ERR), params=(NUMBER,),
))  # fmt: skip
async def get_contact(request: web.Request) -> web.Response:
    rt = runtime(request)
    number = number_param(rt, request.match_info["number"])
    c = await contacts.get(rt.store, rt.config.engine.shards, number)
    if c is None:
        raise NotFound(f"no contact {number}", code="contact_not_found")
    return json_response(contact_json(c))


@operation(Operation(
    "erase_contact", "contacts",
    "Erase a contact: profile, session, messages; the consent ledger is kept, hashed",
    {204: Answer("erased")}, errors=(404, *ERR), params=(NUMBER,),
))  # fmt: skip
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


#: The import's two body formats: described, with an example each (docs/api.md has the rest).
IMPORT_CSV = (
    "number,first_name,last_order,language,timezone,tags\n"
    "+447700900123,Ann,A-1042,en,Europe/London,vip;newsletter\n"
    "+447700900456,Raj,A-1077,,,\n"
)
IMPORT_NDJSON = (
    '{"number": "+447700900123", "fields": {"first_name": "Ann"}, "tags": ["vip"], "language": "en"}\n'
    '{"number": "+447700900456", "fields": {"first_name": "Raj", "last_order": "A-1077"}}\n'
)
#: A file is a string to JSON Schema: its rows are checked as ContactIn is, reported not refused.
IMPORT_BODY = {
    "required": True,
    "description": "The file, streamed; its Content-Type says the format. Every row is checked as "
    "PUT /v1/contacts/{number} checks a body and replaces that contact whole; a bad row is "
    "reported (its row number, field and why) and never stops the import.",
    "content": {
        "text/csv": {
            "schema": {
                "type": "string",
                "contentMediaType": "text/csv",
                "description": "CSV (RFC 4180, UTF-8) with a header row. Columns: number (required, "
                "any common form, read in numbers.default_region), and optionally language, timezone "
                "and tags (separated by ; or |); every other column is a contact field, its values "
                "text; an empty cell is an absent field.",
            },
            "example": IMPORT_CSV,
        },
        "application/x-ndjson": {
            "schema": {
                "type": "string",
                "contentMediaType": "application/x-ndjson",
                "description": "One JSON object a line (also as application/jsonl or "
                "application/json-lines): number (required), fields (an object of values), tags "
                "(an array of strings), language, timezone: the ContactIn body plus its number. "
                "Blank lines are skipped.",
            },
            "example": IMPORT_NDJSON,
        },
    },
}


@operation(Operation(
    "import_contacts", "contacts",
    "Import contacts from JSONL or CSV, streamed (not limited by http.max_body_bytes)",
    {200: Answer("the report", ImportReport)}, errors=(400, 415, *ERR), body=IMPORT_BODY,
))  # fmt: skip
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
        shards=rt.config.engine.shards,
        now_ms=rt.clock.now_ms,
        written=lambda batch: campaigns.schedule(rt, rt.campaigns, batch),
    )
    return json_response(report.as_json())
