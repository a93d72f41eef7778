"""``GET /v1/openapi.json``: the OpenAPI 3.1 description, written from the code that serves it.

Each route of engine/api/routes.py has a handler declared with its :class:`Operation`
(engine/api/schema.py): operationId, tag, answers, path parameters, and the pydantic models of
its body and query string, the same models the handler validates with. The schemas are those
models' JSON Schema, so the description is exactly as strict as the server; the phone number
pattern comes from phonenumbers' metadata (engine/core/numbers.py) and the time zones from the time
zone database (engine/core/contacts.py). A test compares the router with the description both ways;
schemathesis (tests/test_schemathesis.py) holds the server to it. docs/api.md stays the prose.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from engine import __version__
from engine.api.common import ROUTES_SERVED, Route
from engine.api.schema import OPERATIONS, REF, Answer, Operation, Query, operation, phone_schema

JSON = "application/json"

TAGS = [
    {"name": "contacts", "description": "CRM contacts: create, read, erase, bulk import, search, export"},
    {"name": "segments", "description": "Saved segments: named audiences for searches, exports and starts"},
    {"name": "consent", "description": "Consent records and their ledger, suppressions"},
    {"name": "flows", "description": "The flows in use"},
    {"name": "journeys", "description": "Starting flows for contacts, what became of a start, conversions"},
    {"name": "campaigns", "description": "Flows started relative to a date in each contact's record"},
    {"name": "messages", "description": "Single messages outside a flow: send, batch, status, cancel"},
    {"name": "results", "description": "A flow's runs (rows) and its report"},
    {"name": "conversations", "description": "A contact's conversation and message log"},
    {"name": "inbox", "description": "Contacts handed off to a person: list, claim, reply, close, return"},
    {"name": "provider webhooks", "description": "Texts and receipts from SMS providers, in their shapes"},
    {"name": "outcome webhooks", "description": "Events sent to the CRM that it refused: list, replay"},
    {"name": "operations", "description": "Health, metrics and this description (no key needed)"},
]

#: Why each refusal happens (every route declares the ones it can answer).
REFUSALS = {
    400: "the body is not a JSON object", 401: "missing or wrong bearer key", 404: "not found",
    409: "an id reused with another payload, or a cancel that came too late", 413: "body too large",
    415: "a body in a format the route does not read", 422: "a field is wrong (named)",
    503: "Redis unavailable, or the write not yet on redis.wait_replicas replicas: not acknowledged, retry",
}  # fmt: skip


class ErrorDetail(BaseModel):
    code: str
    message: str
    problems: list[str] = []


class Error(BaseModel):
    """Every refusal: ``{"error": {"code", "message"}}`` (``problems``: a flows reload's list)."""

    error: ErrorDetail


PHONE = {"$ref": REF.format(model="PhoneNumber")}


def _refer(node: Any, phone: dict[str, Any]) -> Any:
    """``node`` with each copy of the PhoneNumber schema as a reference to it (pydantic inlines
    a definition a model uses once; a client generator should see one PhoneNumber type)."""
    if isinstance(node, dict):
        if node.get("pattern") == phone["pattern"]:
            extra = {k: v for k, v in node.items() if k not in phone and k != "title"}
            return {**PHONE, **extra}
        return {k: _refer(v, phone) for k, v in node.items()}
    if isinstance(node, list):
        return [_refer(v, phone) for v in node]
    return node


def _models(ops: list[Operation]) -> list[type[BaseModel]]:
    found: dict[type[BaseModel], None] = {Error: None}
    for op in ops:
        bodies = [op.body, *(a.body for a in op.answers.values())]
        found.update({b: None for b in bodies if isinstance(b, type) and issubclass(b, BaseModel)})
    return list(found)


def _content(schema: dict[str, Any], media: str, more: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {media: {"schema": schema}, **{m: {"schema": s} for m, s in more.items()}}


def _answer(a: Answer, refs: dict[type[BaseModel], dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"description": a.description}
    if a.body is not None:
        schema = refs[a.body] if isinstance(a.body, type) else a.body
        out["content"] = _content(schema, a.media, dict(a.more))
    return out


def _query(model: type[Query]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema["properties"].items():
        prop = {k: v for k, v in prop.items() if k != "title"}
        description = prop.pop("description", "")
        out.append({"name": name, "in": "query", "required": name in required,
                    "description": description, "schema": prop})  # fmt: skip
    return out


def _operation(op: Operation, refs: dict[type[BaseModel], dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.id, "tags": [op.tag], "summary": op.summary}
    if op.body is not None:
        if isinstance(op.body, dict):
            out["requestBody"] = op.body
        else:
            out["requestBody"] = {"required": op.body_required, "content": {JSON: {"schema": refs[op.body]}}}
    params = [
        {"name": p.name, "in": "path", "required": True, "description": p.description, "schema": p.schema}
        for p in op.params
    ]
    params += _query(op.query) if op.query else []
    if params:
        out["parameters"] = params
    responses = {str(s): _answer(a, refs) for s, a in sorted(op.answers.items())}
    for s in op.errors:
        responses[str(s)] = {"description": REFUSALS[s], "content": {JSON: {"schema": refs[Error]}}}
    out["responses"] = responses
    if op.public:
        out["security"] = []
    return out


@functools.cache
def _spec(routes: tuple[Route, ...]) -> bytes:
    # The route table (engine/api/routes.py) imports every handler module, this one included,
    # so it is handed in (build_app's ROUTES_SERVED; routes.spec()) rather than imported.
    undeclared = [f"{m} {p}" for m, p, handler in routes if handler not in OPERATIONS]
    assert not undeclared, f"routes without an @operation: {undeclared}"
    ops = [OPERATIONS[handler] for _, _, handler in routes]
    models = _models(ops)
    keys, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    refs = {m: keys[(m, "validation")] for m in models}
    paths: dict[str, Any] = {}
    for (method, path, _), op in zip(routes, ops, strict=True):
        # A parameter's pattern in the route ({number:[^/:]+}) is the router's, not the path's.
        bare = re.sub(r"\{(\w+):[^{}]*\}", r"{\1}", path)
        paths.setdefault(bare, {})[method.lower()] = _operation(op, refs)
    schemas = defs["$defs"]
    phone = phone_schema()
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "Parley",
            "version": __version__,
            "description": "Conversational SMS engine. Prose and curl examples: docs/api.md.",
        },
        "tags": TAGS,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
    doc = _refer(doc, phone)
    doc["components"]["schemas"]["PhoneNumber"] = phone
    return orjson.dumps(doc)


def describe(routes: Sequence[Route]) -> dict[str, Any]:
    """The whole description of ``routes`` (a fresh dict each call; built once per table)."""
    doc: dict[str, Any] = orjson.loads(_spec(tuple(routes)))
    return doc


@operation(Operation(
    "get_openapi", "operations", "This description",
    {200: Answer("OpenAPI 3.1", {"type": "object"})}, public=True,
))  # fmt: skip
async def get_openapi(request: web.Request) -> web.Response:
    return web.Response(body=_spec(request.app[ROUTES_SERVED]), content_type=JSON)
