"""``POST /v1/messages`` (one message outside a flow), ``POST /v1/messages:batch`` (many, the
answer streamed a row at a time), ``GET /v1/messages/{id}`` (what became of it) and
``DELETE /v1/messages/{id}`` (cancel it while it is not yet handed to a gateway).

The message passes the same gate and pipeline as every send (engine/crm/sends.py,
engine/conversation/single.py)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self

import jinja2
import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.api.common import iso, json_response, runtime
from engine.api.flows import SEND_AT
from engine.api.ports import ApiServices
from engine.api.schema import (
    OMITTED,
    Answer,
    Model,
    Operation,
    Param,
    PhoneNumber,
    operation,
    read_body,
    validate,
)
from engine.conversation import single
from engine.core.config import parse_duration
from engine.core.errors import (
    ApiError,
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    RenderError,
    Unprocessable,
    UnsupportedMediaType,
)
from engine.crm import journeys, sends

#: Rows per ``POST /v1/messages:batch``.
MAX_BATCH = 10_000
DURATION = "^[0-9]+(?:\\.[0-9]+)?(?:ms|s|m|h|d|w)?$"
#: The longest ``validity`` (a longer one would also overflow the message's expiry time).
MAX_VALIDITY_S = 365 * 86400
#: Idempotency keys: printable, no spaces.
KEY_PATTERN = "^[!-~]{1,128}$"
BATCH_TYPES = {"application/json": "json", "application/x-ndjson": "ndjson", "application/jsonl": "ndjson"}


class MessageIn(Model):
    """One message: ``to`` and either ``text`` or ``template`` (with ``fields``)."""

    model_config = ConfigDict(
        json_schema_extra={
            "description": "text or template, not both",
            "oneOf": [
                {"required": ["text"], "not": {"required": ["template"]}},
                {"required": ["template"], "not": {"required": ["text"]}},
            ],
        }
    )
    to: PhoneNumber
    text: Annotated[str, Field(min_length=1, max_length=1600, description="the message as it is sent")] = (
        OMITTED
    )
    template: Annotated[
        str,
        Field(
            min_length=1, max_length=5000,
            description="Jinja2, rendered when it is sent, with contact.* (the contact's fields, as flows "
            "see them) and fields.*",
        ),
    ] = OMITTED  # fmt: skip
    fields: Annotated[dict[str, Any], Field(description="values for the template, as fields.*")] = {}
    gateway: Annotated[str, Field(min_length=1, description="a connector (default: the routing rules')")] = (
        OMITTED
    )
    lane: Annotated[Literal["reply", "bulk"], Field(description="reply: before bulk traffic")] = "bulk"
    send_at: Annotated[
        str,
        Field(
            pattern=SEND_AT,
            description="ISO 8601; without a zone: the contact's local time",
            examples=["2026-12-02T10:00", "2026-12-02T10:00:00Z"],
        ),
    ] = OMITTED
    validity: Annotated[
        str,
        Field(
            pattern=DURATION,
            description="expires unsent this long after it is due (30m, 2h, 1d; at most 365d); an SMPP "
            "connector gives the SMSC what is left of it as validity_period",
        ),
    ] = OMITTED
    purpose: Annotated[
        Literal["service", "marketing"], Field(description="marketing needs the contact's opt-in")
    ] = "service"
    priority: Annotated[
        int,
        Field(
            ge=0, le=3, description="SMPP priority_flag, 0 (normal) to 3 (highest); default: the connector's"
        ),
    ] = OMITTED
    receipts: Annotated[
        Literal["none", "final", "failure", "intermediate"],
        Field(
            description="delivery receipts to ask for (SMPP registered_delivery): none, final (delivered "
            "or failed), failure (only a failure), intermediate (final and intermediate); default: the "
            "connector's"
        ),
    ] = OMITTED
    idempotency_key: Annotated[
        str, Field(pattern=KEY_PATTERN, description="a repeat answers the first message's id (per recipient)")
    ] = OMITTED

    MESSAGES = {
        "to": "must be a phone number",
        "text": "must be a non-empty string of at most 1600 characters",
        "template": "must be a non-empty string of at most 5000 characters",
        "fields": "must be an object",
        "gateway": "must be a connector's name",
        "lane": "must be reply or bulk",
        "send_at": "must be an ISO 8601 time like 2026-12-02T10:00 or 2026-12-02T10:00:00Z",
        "validity": "must be a duration like 30m, 2h or 1d",
        "purpose": "must be service or marketing",
        "priority": "must be a whole number from 0 to 3",
        "receipts": "must be none, final, failure or intermediate",
        "idempotency_key": "must be 1 to 128 printable characters without spaces",
    }

    @model_validator(mode="before")
    @classmethod
    def _one_of(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("text" in data) == ("template" in data):
            raise Unprocessable("text", "give either text or template (with fields)")
        return data

    @model_validator(mode="after")
    def _template_compiles(self) -> Self:
        if self.template is not None:
            try:
                single.template(self.template)
            except jinja2.TemplateSyntaxError as exc:
                raise Unprocessable("template", f"line {exc.lineno}: {exc.message}") from None
            except RenderError as exc:
                raise Unprocessable("template", f"can never render: {exc.reason}") from None
        return self


class MessageAccepted(BaseModel):
    id: Annotated[str, Field(description="msg-...: GET /v1/messages/{id} says what became of it")]
    status: Literal["queued", "scheduled"]
    to: str
    send_at: str | None = None
    repeat: Annotated[bool, Field(description="true: a repeat of an idempotency key, nothing new sent")] = (
        False
    )


class HistoryStep(BaseModel):
    status: str
    at: str | None


class MessageView(BaseModel):
    """A single message's status: queued, scheduled, deferred, sent, delivered, failed, refused,
    cancelled or expired; a refusal's ``reason`` is opted_out, suppressed, capped or
    no_marketing_consent (a marketing message without the contact's marketing opt-in); a deferral's
    ``deferred_until`` says when quiet hours end."""

    model_config = ConfigDict(extra="allow")
    id: str
    to: str
    status: str
    reason: str | None = None
    deferred_until: str | None = None
    send_at: str | None = None
    history: list[HistoryStep]


class Cancelled(BaseModel):
    id: str
    status: Literal["cancelled"]
    already: bool = False


ERR = (401, 422, 503)
ID = Param("id", "the message id (msg-...) the send answered")
REASONS = {
    "opted out": "opted_out", "suppressed": "suppressed", "capped": "capped",
    "no marketing consent": "no_marketing_consent",
}  # fmt: skip


def request_of(rt: ApiServices, body: MessageIn) -> sends.SendRequest:
    """The domain's request, with the checks that need the runtime (the connector, send_at's calendar)."""
    if body.gateway is not None and body.gateway not in rt.gateways:
        known = ", ".join(sorted(rt.gateways)) or "none"
        raise Unprocessable("gateway", f"no connector {body.gateway!r} (configured: {known})")
    validity = parse_duration(body.validity) if body.validity is not None else None
    if validity is not None and validity > MAX_VALIDITY_S:
        raise Unprocessable("validity", "must be at most 365d")
    return sends.SendRequest(
        to=body.to, text=body.text, template=body.template, fields=body.fields, gateway=body.gateway,
        lane=body.lane, send_at=journeys.parse_send_at(body.send_at),
        validity_s=validity,
        purpose=body.purpose,
        idempotency_key=body.idempotency_key, priority=body.priority, receipts=body.receipts,
    )  # fmt: skip


def _accepted(acc: sends.Accepted, to: str) -> dict[str, Any]:
    return {"id": acc.id, "status": acc.status, "to": to, "send_at": iso(acc.send_at), "repeat": acc.repeat}


@operation(Operation(
    "send_message", "messages",
    "Send one message outside a flow (same gate and pipeline as every send); header Idempotency-Key "
    "or idempotency_key makes a retry harmless",
    {202: Answer("accepted", MessageAccepted), 200: Answer("a repeat of its key", MessageAccepted)},
    errors=(400, *ERR), body=MessageIn,
))  # fmt: skip
async def post_message(request: web.Request) -> web.Response:
    """Accept one message: 202 with its id once it is in Redis (queued now, or scheduled for
    ``send_at``). A repeat of an idempotency key is 200 with the first message's id."""
    rt = runtime(request)
    body = await read_body(request, MessageIn, rt)
    header = request.headers.get("Idempotency-Key")
    if header is not None:
        if body.idempotency_key is not None and body.idempotency_key != header:
            raise Unprocessable("idempotency_key", "differs from the Idempotency-Key header")
        body = body.model_copy(update={"idempotency_key": validate_key(header)})
    (acc,) = await sends.accept(rt, [request_of(rt, body)])
    return json_response(_accepted(acc, body.to), 200 if acc.repeat else 202)


def validate_key(value: str) -> str:
    if not re.fullmatch(KEY_PATTERN, value):
        raise Unprocessable("Idempotency-Key", "must be 1 to 128 printable characters without spaces")
    return value


BATCH_EXAMPLE = (
    '{"to": "+447700900123", "text": "Your parcel arrives today"}\n'
    '{"to": "+447700900456", "template": "Hi {{ contact.first_name }}, {{ fields.code }}", '
    '"fields": {"code": "A-1"}}\n'
)
BATCH_BODY = {
    "required": True,
    "description": f"Up to {MAX_BATCH:,} messages, each a MessageIn (its own idempotency_key, if any). "
    "A bad row is answered with its error and never stops the others.",
    "content": {
        "application/json": {
            "schema": {"type": "array", "items": {"$ref": "#/components/schemas/MessageIn"}}
        },
        "application/x-ndjson": {
            "schema": {
                "type": "string",
                "contentMediaType": "application/x-ndjson",
                "description": "One MessageIn a line (also as application/jsonl); blank lines are skipped.",
            },
            "example": BATCH_EXAMPLE,
        },
    },
}
BATCH_ROW = {
    "type": "object",
    "description": "One line per row, in order: row (1-based) and either the accepted message "
    "(id, status, to, send_at, repeat) or error {code, field, message}.",
    "required": ["row"],
    "properties": {
        "row": {"type": "integer"}, "id": {"type": "string"}, "status": {"type": "string"},
        "to": {"type": "string"}, "send_at": {"type": ["string", "null"]}, "repeat": {"type": "boolean"},
        "error": {"type": "object", "properties": {
            "code": {"type": "string"}, "field": {"type": "string"}, "message": {"type": "string"}}},
    },
}  # fmt: skip


def _rows(raw: bytes, fmt: str) -> list[Any]:
    if fmt == "json":
        try:
            rows = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
        if not isinstance(rows, list):
            raise BadRequest("body must be a JSON array of messages (or NDJSON, one a line)")
        return rows
    out: list[Any] = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            out.append(Unprocessable("body", f"not a JSON object: {exc}"))
    return out


@operation(Operation(
    "send_messages", "messages", "Send many messages: one result a row, streamed as NDJSON",
    {200: Answer("a result per row, as NDJSON", BATCH_ROW, media="application/x-ndjson")},
    errors=(400, 413, 415, *ERR), body=BATCH_BODY,
))  # fmt: skip
async def post_batch(request: web.Request) -> web.StreamResponse:
    """Check every row; accept the good ones (a bad one is reported with its row and field, and
    stops nothing); answer a line per row as each chunk is accepted."""
    rt = runtime(request)
    fmt = BATCH_TYPES.get(request.content_type)
    if fmt is None:
        wanted = " or ".join(sorted(BATCH_TYPES))
        raise UnsupportedMediaType(f"send the rows as Content-Type {wanted} (got {request.content_type!r})")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"body is larger than {request.client_max_size} bytes") from None
    if not raw.strip():
        raise BadRequest("body is empty; send a JSON array of messages, or NDJSON")
    rows = _rows(raw, fmt)
    if len(rows) > MAX_BATCH:
        raise Unprocessable("body", f"{len(rows)} rows; at most {MAX_BATCH:,} per batch")
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    for start in range(0, len(rows), sends.CHUNK):
        chunk = rows[start : start + sends.CHUNK]
        results: list[dict[str, Any]] = []
        good: list[tuple[int, sends.SendRequest]] = []
        for i, row in enumerate(chunk, start + 1):
            try:
                if isinstance(row, Unprocessable):
                    raise row
                if not isinstance(row, dict):
                    raise Unprocessable("body", "each row must be a JSON object")
                good.append((i, request_of(rt, validate(MessageIn, row, rt))))
            except Unprocessable as exc:
                results.append(
                    {"row": i, "error": {"code": exc.code, "field": exc.field, "message": exc.message}}
                )
            except ApiError as exc:
                results.append(
                    {"row": i, "error": {"code": exc.code, "field": "body", "message": exc.message}}
                )
        accepted = await sends.accept(rt, [r for _, r in good])
        results += [{"row": i, **_accepted(a, r.to)} for (i, r), a in zip(good, accepted, strict=True)]
        results.sort(key=lambda r: int(r["row"]))
        await response.write(b"".join(orjson.dumps(r) + b"\n" for r in results))
    await response.write_eof()
    return response


def _view(rec: dict[str, Any]) -> dict[str, Any]:
    status = rec.get("status", "")
    out: dict[str, Any] = {
        "id": rec["id"], "to": rec.get("to"), "status": "refused" if status == "blocked" else status,
        "text": rec.get("text"), "gateway": rec.get("gateway") or None, "lane": rec.get("lane"),
        "purpose": rec.get("purpose"), "at": iso(rec.get("at")), "send_at": iso(rec.get("send_at")),
        "provider_id": rec.get("provider_id"), "error": rec.get("error"),
    }  # fmt: skip
    if status == "blocked":
        out["reason"] = next((v for k, v in REASONS.items() if str(rec.get("error", "")).startswith(k)), None)
    if status == "deferred":
        out["reason"] = "deferred_until"
        out["deferred_until"] = iso(rec.get("deferred_until"))
    out["history"] = [
        {"status": "refused" if h[0] == "blocked" else h[0], "at": iso(h[1])} for h in rec.get("history", [])
    ]
    return out


@operation(Operation(
    "get_message", "messages", "What became of a single message, with its status history",
    {200: Answer("the message", MessageView)}, errors=(404, 401, 503), params=(ID,),
))  # fmt: skip
async def get_message(request: web.Request) -> web.Response:
    rt = runtime(request)
    mid = request.match_info["id"]
    rec = await sends.view(rt, mid)
    if rec is None:
        raise NotFound(f"no message {mid!r}", code="message_not_found")
    return json_response(_view(rec))


@operation(Operation(
    "cancel_message", "messages", "Cancel a single message not yet handed to a gateway",
    {200: Answer("cancelled (already: by an earlier call)", Cancelled)},
    errors=(404, 409, 401, 503), params=(ID,),
))  # fmt: skip
async def delete_message(request: web.Request) -> web.Response:
    """Cancel it if no sender has taken it yet (atomically: a sender that takes it first wins,
    and this answers 409)."""
    rt = runtime(request)
    mid = request.match_info["id"]
    result, rec = await sends.cancel_message(rt, mid)
    if result == "not_found":
        raise NotFound(f"no message {mid!r}", code="message_not_found")
    if result in ("cancelled", "already"):
        return json_response({"id": mid, "status": "cancelled", "already": result == "already"})
    status = _view(rec)["status"] if rec else result
    why = {
        "handed": "it was already handed to a gateway",
        "expired": "it expired unsent",
    }.get(result, f"it is already {status}")
    raise Conflict(f"message {mid} cannot be cancelled: {why}", code="not_cancellable")
