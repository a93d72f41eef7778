"""``GET /v1/webhooks/dead`` and ``POST /v1/webhooks/dead:replay``: the outcome webhooks' dead letters."""

from __future__ import annotations

import re
from typing import Annotated, Any, Self

from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from engine.api.common import json_response, runtime
from engine.api.schema import OMITTED, Answer, Model, Operation, Query, operation, read_body, read_query
from engine.core.errors import NotFound, Unprocessable
from engine.crm import webhooks_dead

MAX_LIMIT = 1000
MAX_IDS = 10_000
ENTRY_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
INDEX = "its index in crm.webhooks"


def _whole(value: Any) -> Any:
    """JSON's 1.0 is the integer 1 (anything else is left to the type check)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Index = Annotated[int, Field(ge=0)]


class DeadQuery(Query):
    webhook: Annotated[Index | None, Field(description=f"one webhook ({INDEX})")] = None
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT, description="at most this many per webhook (100)")] = 100

    MESSAGES = {"webhook": "expected a webhook index (0, 1, ...)", "limit": f"must be 1..{MAX_LIMIT}"}


class ReplayIn(Model):
    """``POST /v1/webhooks/dead:replay``: all, one webhook's, or some of its letters (no body: all)."""

    model_config = ConfigDict(
        json_schema_extra={
            "dependentSchemas": {
                "ids": {"required": ["webhook"], "properties": {"webhook": {"type": "integer"}}}
            }
        }
    )
    webhook: Annotated[
        Index | None,
        BeforeValidator(_whole),
        Field(description=f"{INDEX} (default: every one; required with ids)"),
    ] = None
    ids: Annotated[
        list[Annotated[str, Field(pattern=ENTRY_ID.pattern)]],
        Field(max_length=MAX_IDS, description="dead letter ids (required with webhook)"),
    ] = OMITTED

    MESSAGES = {
        "webhook": "expected a webhook index (0, 1, ...)",
        "ids": "expected a list of up to 10,000 dead letter ids",
        "ids[]": "expected a list of up to 10,000 dead letter ids",
    }

    @model_validator(mode="after")
    def _ids_need_their_webhook(self) -> Self:
        if self.ids is not None and self.webhook is None:
            raise Unprocessable("ids", "say which webhook the ids are from ('webhook')")
        return self


class DeadLetter(BaseModel):
    id: str
    event_id: str
    error: str
    attempts: int
    dead_at: Annotated[str, Field(json_schema_extra={"format": "date-time"})]
    event: Annotated[dict[str, Any], Field(description="the event as sent")]


class WebhookLetters(BaseModel):
    webhook: int
    url: str
    count: int
    dead: list[DeadLetter]


class DeadLetters(BaseModel):
    webhooks: list[WebhookLetters]


class Replayed(BaseModel):
    replayed: Annotated[dict[str, int], Field(description="how many were replayed, per webhook index")]


def _indexes(request: web.Request, index: int | None) -> list[int]:
    """The webhooks meant: every one (None), or the one at ``index``. An index crm.webhooks does
    not have is a 404, like an unknown flow."""
    hooks = runtime(request).config.crm.webhooks
    if index is None:
        return list(range(len(hooks)))
    if index >= len(hooks):
        raise NotFound(f"no webhook {index} (crm.webhooks has {len(hooks)})", code="webhook_not_found")
    return [index]


ERR = (401, 422, 503)


@operation(Operation(
    "list_dead_letters", "outcome webhooks",
    "Outcome webhooks' dead letters: each event given up on, with its last error",
    {200: Answer("dead letters per webhook, oldest first", DeadLetters)}, errors=(404, *ERR), query=DeadQuery,
))  # fmt: skip
async def get_dead(request: web.Request) -> web.Response:
    """Each webhook's dead letters, oldest first: ``?webhook=I`` one of them, ``?limit=N`` (100)."""
    rt = runtime(request)
    query = read_query(request, DeadQuery, rt)
    limit = query.limit
    out = []
    for i in _indexes(request, query.webhook):
        count, dead = await webhooks_dead.letters(rt.store, i, limit)
        out.append({"webhook": i, "url": rt.config.crm.webhooks[i].url, "count": count, "dead": dead})
    return json_response({"webhooks": out})


@operation(Operation(
    "replay_dead_letters", "outcome webhooks",
    "Send dead letters again (all, one webhook's, or some), with their original event ids",
    {200: Answer("how many were replayed, per webhook", Replayed)}, errors=(400, 404, *ERR),
    body=ReplayIn, body_required=False,
))  # fmt: skip
async def post_replay(request: web.Request) -> web.Response:
    """Send dead letters again: all, one webhook's (``{"webhook": I}``), or some (``"ids"``)."""
    rt = runtime(request)
    body = await read_body(request, ReplayIn, rt) if request.body_exists else ReplayIn()
    replayed = {}
    for i in _indexes(request, body.webhook):
        replayed[str(i)] = await webhooks_dead.replay(rt.store, i, body.ids)
    return json_response({"replayed": replayed})
