"""``GET /v1/openapi.json``: an OpenAPI 3.1 description of every route the app serves.

Written by hand next to the handlers (they read bodies by hand too), and kept honest by a test
that compares its paths and methods with the app's router both ways and validates it against
the OpenAPI schema. docs/api.md stays the prose; this is what a client generator reads.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engine import __version__
from engine.api.common import json_response
from engine.api.consent import API_SOURCES, MAX_NOTE
from engine.api.conversations import MAX_LIMIT as MESSAGES_MAX
from engine.api.flows import MAX_CONTACTS
from engine.api.webhooks import ENTRY_ID
from engine.api.webhooks import MAX_LIMIT as DEAD_MAX
from engine.core import contacts
from engine.core.numbers import e164_pattern

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(schema: dict[str, Any], content_type: str = JSON) -> dict[str, Any]:
    return {"required": True, "content": {content_type: {"schema": schema}}}


def _ok(description: str, schema: dict[str, Any] | None = None, content_type: str = JSON) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {content_type: {"schema": schema}}
    return out


def _errors(*statuses: int) -> dict[str, Any]:
    why = {
        400: "the body is not a JSON object", 401: "missing or wrong bearer key", 404: "not found",
        409: "an id reused with another payload", 413: "body too large",
        415: "a body in a format the route does not read", 422: "a field is wrong (named)",
        503: "Redis unavailable: nothing was accepted, retry",
    }  # fmt: skip
    return {str(s): {"description": why[s], "content": {JSON: {"schema": _ref("Error")}}} for s in statuses}


def _op(operation_id: str, tag: str, summary: str, responses: dict[str, Any], *,
        body: dict[str, Any] | None = None, params: list[dict[str, Any]] | None = None,
        public: bool = False) -> dict[str, Any]:  # fmt: skip
    """One operation; ``operation_id`` is what a generated client names its method."""
    op: dict[str, Any] = {
        "operationId": operation_id, "tags": [tag], "summary": summary, "responses": responses,
    }  # fmt: skip
    if body is not None:
        op["requestBody"] = body
    if params:
        op["parameters"] = params
    if public:
        op["security"] = []
    return op


def _path(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _query(name: str, description: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


NUMBER = _path("number", "the contact's phone number, E.164", _ref("PhoneNumber"))
STRING: dict[str, Any] = {"type": "string"}
OBJECT: dict[str, Any] = {"type": "object"}

TAGS = [
    {"name": "contacts", "description": "CRM contacts: create, read, erase, bulk import"},
    {"name": "consent", "description": "Consent records and their ledger, suppressions"},
    {"name": "flows", "description": "The flows in use"},
    {"name": "journeys", "description": "Starting flows for contacts, what became of a start, conversions"},
    {"name": "results", "description": "A flow's runs (rows) and its report"},
    {"name": "conversations", "description": "A contact's conversation and message log"},
    {"name": "provider webhooks", "description": "Texts and receipts from SMS providers, in their shapes"},
    {"name": "outcome webhooks", "description": "Events sent to the CRM that it refused: list, replay"},
    {"name": "operations", "description": "Health, metrics and this description (no key needed)"},
]

#: A provider webhook's body is the connector's own shape (gateways.md): the generic connector's
#: JSON object or list of them, Jasmin's and Twilio's forms.
PROVIDER_BODY = {
    "required": True,
    "description": "the shape of the gateway's connector (docs/gateways.md)",
    "content": {
        JSON: {"schema": {"type": ["object", "array"], "description": "one message, or a list taken whole"}},
        "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
    },
}

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

SCHEMAS: dict[str, Any] = {
    "PhoneNumber": {
        "type": "string",
        "pattern": e164_pattern(),
        "description": "A phone number in E.164 (+ country code, national number, no spaces), of "
        "a length possible for its country. The server also reads common national and spaced "
        "forms (07700 900123, in numbers.default_region) and always answers E.164; it refuses "
        "a number with an extension (ext. 5, x5, #5).",
        "examples": ["+447700900123"],
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": STRING,
                    "message": STRING,
                    "problems": {"type": "array", "items": STRING},
                },
            }
        },
    },
    "ContactIn": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "fields": {
                "type": ["object", "null"],
                "description": "CRM fields by name; null or left out: none",
                "maxProperties": contacts.MAX_FIELDS,
                "propertyNames": {
                    "pattern": contacts.FIELD_NAME_RE.pattern,
                    "not": {"enum": sorted(contacts.RESERVED_FIELDS)},
                },
                "additionalProperties": {
                    "oneOf": [_ref("FieldValue"), {"type": "array", "items": _ref("FieldValue")}]
                },
            },
            "tags": {
                "type": ["array", "null"],
                "maxItems": contacts.MAX_TAGS,
                "items": {"type": "string", "pattern": contacts.TAG_RE.pattern},
            },
            "language": {
                "type": ["string", "null"],
                "pattern": contacts.LANGUAGE_RE.pattern,
                "examples": ["en", "pt-BR"],
            },
            "timezone": {
                "description": "an IANA time zone name (the time zone database's list)",
                "anyOf": [{"enum": sorted(contacts.time_zones())}, {"type": "null"}],
                "examples": ["Europe/London"],
            },
        },
    },
    "FieldValue": {
        "anyOf": [
            {"type": "string", "maxLength": contacts.MAX_VALUE_CHARS},
            {"type": ["number", "boolean", "null"]},
        ]
    },
    "Contact": {
        "type": "object",
        "properties": {
            "number": _ref("PhoneNumber"),
            "fields": OBJECT,
            "tags": {"type": "array", "items": STRING},
            "language": {"type": ["string", "null"]},
            "timezone": {"type": ["string", "null"]},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
        },
    },
    "ConsentIn": {
        "type": "object",
        "required": ["status", "source"],
        "additionalProperties": False,
        "properties": {
            "status": {"enum": ["opted_in", "opted_out"]},
            "source": {"enum": ["api", "import", "web", "paper", "carrier"]},
            "note": {"type": "string", "maxLength": 500},
        },
    },
    "SuppressionIn": {
        "type": "object",
        "required": ["reason"],
        "additionalProperties": False,
        "properties": {
            "reason": {"type": "string", "minLength": 1, "maxLength": MAX_NOTE, "pattern": "\\S"},
            "source": {"enum": list(API_SOURCES), "default": "api"},
        },
    },
    "StartIn": {
        "type": "object",
        "description": "contacts or audience, not both",
        "additionalProperties": False,
        "oneOf": [
            {"required": ["contacts"], "not": {"required": ["audience"]}},
            {"required": ["audience"], "not": {"required": ["contacts"]}},
        ],
        "properties": {
            "contacts": {
                "type": "array",
                "items": _ref("PhoneNumber"),
                "minItems": 1,
                "maxItems": MAX_CONTACTS,
                "description": "existing contacts (404 names any that are not)",
            },
            "audience": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["field"],
                    "properties": {"field": {"type": "string", "pattern": "^contact\\."}},
                    "description": "a condition like {field: contact.city, equals: Leeds} (flows.md)",
                },
                "description": "conditions on contact fields; all must hold",
            },
            "params": {
                "type": "object",
                "not": {"required": ["_start"]},
                "description": "available to templates as params.*",
            },
            "interrupt": {"type": "boolean", "default": False},
            "send_at": {
                "type": ["string", "null"],
                "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}"
                "(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\\.[0-9]{1,6})?)?)?(?:Z|[+-][0-9]{2}:[0-9]{2})?$",
                "description": "ISO 8601; without a zone: each contact's local time",
                "examples": ["2026-12-02T10:00", "2026-12-02T10:00:00Z"],
            },
            "holdout": {"type": "number", "minimum": 0, "exclusiveMaximum": 100, "description": "percent"},
            "arms": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "not": {"const": "holdout"}},
                        "weight": {"type": "number", "exclusiveMinimum": 0},
                        "params": OBJECT,
                    },
                },
                "description": "names unique, not holdout",
            },
            "experiment": {
                "type": "string",
                "pattern": "^[^|]+$",
                "description": "the assignment's name (default: the flow)",
            },
        },
    },
    "ContactEventIn": {
        "type": "object",
        "required": ["type"],
        "additionalProperties": False,
        "properties": {
            "type": {"type": "string", "pattern": "^[a-z0-9_]{1,64}$"},
            "value": {"type": ["number", "null"], "description": "e.g. the order's amount"},
            "id": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": 128,
                "description": "makes a resend harmless",
            },
        },
    },
    "Started": {
        "type": "object",
        "properties": {
            "flow": STRING,
            "started": {
                "type": "array",
                "items": {"type": "object", "properties": {"contact": STRING, "event_id": STRING}},
            },
            "skipped": {
                "type": "array",
                "items": {"type": "object", "properties": {"contact": STRING, "reason": STRING}},
            },
        },
    },
    "Conversation": {
        "type": "object",
        "properties": {
            "contact": STRING,
            "flow": {"type": ["string", "null"]},
            "status": {"enum": ["waiting", "ended", "none"]},
            "node": {"type": ["string", "null"]},
            "outcome": {"type": ["string", "null"]},
            "results": OBJECT,
        },
    },
    "Messages": {"type": "object", "properties": {"messages": {"type": "array", "items": OBJECT}}},
    "Report": {
        "type": "object",
        "properties": {
            "flow": STRING,
            "runs": {
                "type": "object",
                "properties": {
                    k: {"type": "integer"}
                    for k in ("started", "completed", "expired", "unanswered", "in_progress")
                },
            },
            "response_rate": {"type": ["number", "null"]},
            "opt_out_rate": {"type": ["number", "null"]},
            "median_time_to_reply_s": {"type": ["number", "null"]},
            "messages": OBJECT,
            "nps": {
                "type": "object",
                "description": "per result name: respondents, promoters, passives, detractors, score",
            },
            "drop_off": {
                "type": "array",
                "items": {"type": "object", "properties": {"node": STRING, "runs": {"type": "integer"}}},
            },
        },
    },
    "DeadLetters": {
        "type": "object",
        "properties": {
            "webhooks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "webhook": {"type": "integer"},
                        "url": STRING,
                        "count": {"type": "integer"},
                        "dead": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "id": STRING,
                                    "event_id": STRING,
                                    "error": STRING,
                                    "attempts": {"type": "integer"},
                                    "dead_at": {"type": "string", "format": "date-time"},
                                    "event": {"type": "object", "description": "the event as sent"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    "ReplayIn": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "webhook": {
                "type": ["integer", "null"],
                "minimum": 0,
                "description": "its index in crm.webhooks (default: every one; required with ids)",
            },
            "ids": {
                "type": "array",
                "items": {"type": "string", "pattern": ENTRY_ID.pattern},
                "maxItems": 10000,
                "description": "dead letter ids (required with webhook)",
            },
        },
        "dependentSchemas": {
            "ids": {"required": ["webhook"], "properties": {"webhook": {"type": "integer"}}}
        },
    },
    "ImportReport": {
        "type": "object",
        "required": ["rows", "created", "updated", "failed", "errors", "errors_truncated"],
        "properties": {
            "rows": {"type": "integer"},
            "created": {"type": "integer"},
            "updated": {"type": "integer"},
            "failed": {"type": "integer"},
            "errors": {
                "type": "array",
                "maxItems": 1000,
                "items": {
                    "type": "object",
                    "properties": {
                        "row": {"type": "integer"},
                        "field": {"type": ["string", "null"]},
                        "message": STRING,
                    },
                },
            },
            "errors_truncated": {"type": "boolean"},
        },
    },
}

ERR = (401, 422, 503)


def spec() -> dict[str, Any]:
    """The whole description (a fresh dict each call)."""
    contact = "/v1/contacts/{number}"
    paths: dict[str, Any] = {
        contact: {
            "put": _op(
                "put_contact",
                "contacts",
                "Create or replace a contact (the CRM is the source of truth)",
                {
                    "200": _ok("replaced", _ref("Contact")),
                    "201": _ok("created", _ref("Contact")),
                    **_errors(400, *ERR),
                },
                body=_body(_ref("ContactIn")),
                params=[NUMBER],
            ),
            "get": _op(
                "get_contact",
                "contacts",
                "Read a contact",
                {"200": _ok("the contact", _ref("Contact")), **_errors(404, *ERR)},
                params=[NUMBER],
            ),
            "delete": _op(
                "erase_contact",
                "contacts",
                "Erase a contact: profile, session, messages; the consent ledger is kept, hashed",
                {"204": _ok("erased"), **_errors(404, *ERR)},
                params=[NUMBER],
            ),
        },
        "/v1/contacts:import": {
            "post": _op(
                "import_contacts",
                "contacts",
                "Import contacts from JSONL or CSV, streamed (not limited by http.max_body_bytes)",
                {"200": _ok("the report", _ref("ImportReport")), **_errors(400, 415, *ERR)},
                body=IMPORT_BODY,
            ),
        },
        f"{contact}/consent": {
            "get": _op(
                "get_consent",
                "consent",
                "Consent status and its ledger (?format=csv: the ledger as CSV)",
                {
                    "200": {
                        "description": "status and ledger",
                        "content": {JSON: {"schema": OBJECT}, "text/csv": {"schema": STRING}},
                    },
                    **_errors(*ERR),
                },
                params=[NUMBER, _query("format", "json or csv", {"enum": ["json", "csv"]})],
            ),
            "put": _op(
                "put_consent",
                "consent",
                "Record a consent change with its source",
                {"200": _ok("recorded", OBJECT), **_errors(400, *ERR)},
                body=_body(_ref("ConsentIn")),
                params=[NUMBER],
            ),
        },
        "/v1/suppressions/{number}": {
            "put": _op(
                "suppress_number",
                "consent",
                "Suppress a number (nothing is sent to it)",
                {"200": _ok("suppressed", OBJECT), **_errors(400, *ERR)},
                body=_body(_ref("SuppressionIn")),
                params=[NUMBER],
            ),
            "delete": _op(
                "lift_suppression",
                "consent",
                "Lift a suppression",
                {"200": _ok("lifted", OBJECT), **_errors(*ERR)},
                params=[NUMBER],
            ),
        },
        "/v1/flows:reload": {
            "post": _op(
                "reload_flows",
                "flows",
                "Load the flows directory again",
                {"200": _ok("the flows now in use", OBJECT), **_errors(*ERR)},
            ),
        },
        "/v1/flows/{flow}/start": {
            "post": _op(
                "start_flow",
                "journeys",
                "Start a flow for contacts (202 once every start is in Redis)",
                {"202": _ok("queued", _ref("Started")), **_errors(400, 404, *ERR)},
                body=_body(_ref("StartIn")),
                params=[_path("flow", "the flow's name")],
            ),
        },
        "/v1/starts/{id}": {
            "get": _op(
                "get_start",
                "journeys",
                "What became of a journey start: counts at request time and its turns' outcomes",
                {"200": _ok("the start", OBJECT), **_errors(404, *ERR)},
                params=[_path("id", "the start id (st-...) the start answered")],
            ),
        },
        "/v1/contacts/{number}/events": {
            "post": _op(
                "record_conversion",
                "journeys",
                "A conversion the CRM reports, attributed to the contact's last journey start",
                {
                    "202": _ok("recorded (attributed or not)", OBJECT),
                    "200": _ok("a repeat of an id"),
                    **_errors(400, *ERR),
                },
                body=_body(_ref("ContactEventIn")),
                params=[NUMBER],
            ),
        },
        "/v1/flows/{flow}/results": {
            "get": _op(
                "get_flow_results",
                "results",
                "One row per run of the flow, streamed",
                {
                    "200": {
                        "description": "the runs",
                        "content": {
                            "text/csv": {"schema": STRING},
                            "application/x-ndjson": {"schema": STRING},
                        },
                    },
                    **_errors(404, *ERR),
                },
                params=[
                    _path("flow", "the flow's name"),
                    _query("format", "csv (default) or jsonl", {"enum": ["csv", "jsonl"]}),
                ],
            ),
        },
        "/v1/flows/{flow}/report": {
            "get": _op(
                "get_flow_report",
                "results",
                "Runs, completion, response, opt-out and delivery rates, time to reply, NPS, drop-off",
                {"200": _ok("the report", _ref("Report")), **_errors(404, *ERR)},
                params=[_path("flow", "the flow's name")],
            ),
        },
        "/v1/inbound/{gateway}": {
            "post": _op(
                "receive_texts",
                "provider webhooks",
                "A provider's webhook: customers' texts (the connector's own shape and auth)",
                {
                    "200": _ok("a repeat of an accepted text"),
                    "202": _ok("durably accepted"),
                    **_errors(400, 404, 409, 413, *ERR),
                },
                body=PROVIDER_BODY,
                params=[_path("gateway", "a gateway name from the config")],
            ),
        },
        "/v1/receipts/{gateway}": {
            "post": _op(
                "receive_receipts",
                "provider webhooks",
                "A provider's webhook: delivery receipts",
                {
                    "200": _ok("applied, parked or gone counts (or the provider's own answer)"),
                    **_errors(400, 404, 413, *ERR),
                },
                body=PROVIDER_BODY,
                params=[_path("gateway", "a gateway name from the config")],
            ),
        },
        "/v1/conversations/{number}": {
            "get": _op(
                "get_conversation",
                "conversations",
                "The current or last conversation with its results",
                {"200": _ok("the conversation", _ref("Conversation")), **_errors(404, *ERR)},
                params=[NUMBER],
            ),
        },
        "/v1/messages": {
            "get": _op(
                "list_messages",
                "conversations",
                "A contact's message log, oldest first, with status histories",
                {"200": _ok("messages", _ref("Messages")), **_errors(404, *ERR)},
                params=[
                    _query("contact", "the contact's number", _ref("PhoneNumber"), required=True),
                    _query(
                        "limit",
                        "at most this many (newest; 50)",
                        {"type": "integer", "minimum": 1, "maximum": MESSAGES_MAX},
                    ),
                ],
            ),
        },
        "/v1/webhooks/dead": {
            "get": _op(
                "list_dead_letters",
                "outcome webhooks",
                "Outcome webhooks' dead letters: each event given up on, with its last error",
                {
                    "200": _ok("dead letters per webhook, oldest first", _ref("DeadLetters")),
                    **_errors(404, *ERR),
                },
                params=[
                    _query(
                        "webhook",
                        "one webhook (its index in crm.webhooks)",
                        {"type": "integer", "minimum": 0},
                    ),
                    _query(
                        "limit",
                        "at most this many per webhook (100)",
                        {"type": "integer", "minimum": 1, "maximum": DEAD_MAX},
                    ),
                ],
            ),
        },
        "/v1/webhooks/dead:replay": {
            "post": _op(
                "replay_dead_letters",
                "outcome webhooks",
                "Send dead letters again (all, one webhook's, or some), with their original event ids",
                {"200": _ok("how many were replayed, per webhook", OBJECT), **_errors(400, 404, *ERR)},
                body={"required": False, "content": {JSON: {"schema": _ref("ReplayIn")}}},
            ),
        },
        "/v1/openapi.json": {
            "get": _op(
                "get_openapi",
                "operations",
                "This description",
                {"200": _ok("OpenAPI 3.1", OBJECT)},
                public=True,
            ),
        },
        "/healthz": {
            "get": _op(
                "get_health",
                "operations",
                "Health: Redis, workers, shards, gateways",
                {"200": _ok("healthy", OBJECT), "503": _ok("degraded (the body says which part)", OBJECT)},
                public=True,
            ),
        },
        "/metrics": {
            "get": _op(
                "get_metrics",
                "operations",
                "Prometheus metrics",
                {"200": _ok("text exposition format", STRING, "text/plain")},
                public=True,
            ),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Parley",
            "version": __version__,
            "description": "Conversational SMS engine. Prose and curl examples: docs/api.md.",
        },
        "tags": TAGS,
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


async def get_openapi(request: web.Request) -> web.Response:
    return json_response(spec())
