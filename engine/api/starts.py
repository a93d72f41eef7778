"""``GET /v1/starts/{id}`` (what became of a journey start) and ``POST /v1/contacts/{number}/events``
(a conversion the CRM reports, attributed to the contact's last journey start)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from aiohttp import web
from pydantic import BaseModel, Field

from engine.api.common import iso, json_response, number_param, runtime
from engine.api.ports import ApiServices
from engine.api.schema import NUMBER, Answer, Model, Operation, Param, operation, read_body
from engine.core import keys
from engine.core.errors import NotFound
from engine.crm import reports, sends


class ContactEventIn(Model):
    """``POST /v1/contacts/{number}/events``: a conversion."""

    type: Annotated[str, Field(pattern="^[a-z0-9_]{1,64}$")]
    value: Annotated[int | float | None, Field(description="e.g. the order's amount")] = None
    id: Annotated[str | None, Field(min_length=1, max_length=128, description="makes a resend harmless")] = (
        None
    )

    MESSAGES = {
        "type": "must be a name like purchase or meeting_set (a-z, 0-9, _)",
        "value": "must be a number (e.g. the order's amount) or left out",
        "id": "must be a string of at most 128 characters",
    }


class Turns(BaseModel):
    started: int
    deferred: int
    skipped: dict[str, int]


class StartView(BaseModel):
    """A start's counts at request time (requested, queued, scheduled) and its turns' outcomes."""

    start: str
    flow: str
    at: str
    experiment: str | None
    skipped_at_request: dict[str, int]
    turns: Turns
    cancelled_at: Annotated[
        str | None, Field(json_schema_extra={"format": "date-time"}, description="when it was cancelled")
    ] = None


class Attribution(BaseModel):
    flow: str
    start: str
    experiment: str | None
    arm: str | None


class Recorded(BaseModel):
    status: str = Field(description="recorded, or duplicate for a repeat of an id")
    attributed: Attribution | None = None


ERR = (401, 422, 503)


@operation(Operation(
    "get_start", "journeys",
    "What became of a journey start: counts at request time and its turns' outcomes",
    {200: Answer("the start", StartView)}, errors=(404, *ERR),
    params=(Param("id", "the start id (st-...) the start answered"),),
))  # fmt: skip
async def get_start(request: web.Request) -> web.Response:
    """The start's request-time counts and, from the outcome events, what its turns did."""
    return json_response(await start_view(runtime(request), request.match_info["id"]))


async def start_view(rt: ApiServices, sid: str) -> dict[str, Any]:
    """What ``GET /v1/starts/{id}`` answers (also the console's journey page): NotFound for an
    unknown id."""
    raw: dict[Any, Any] = await rt.store.redis.hgetall(keys.start_record(sid))
    if not raw:
        raise NotFound(f"no start {sid!r}", code="start_not_found")
    rec = {k.decode(): v.decode() for k, v in raw.items()}
    flow = rec.pop("flow")
    at = int(rec.pop("at"))
    experiment = rec.pop("experiment", None)
    cancelled_at = rec.pop("cancelled_at", None)
    requested = {k: int(v) for k, v in rec.items() if not k.startswith("skipped_")}
    skipped = {k.removeprefix("skipped_"): int(v) for k, v in rec.items() if k.startswith("skipped_")}
    turns = (await start_turns(rt, {sid: flow}, needle=sid))[sid]
    return {
        "start": sid, "flow": flow, "at": iso(at), "experiment": experiment, **requested,
        "skipped_at_request": skipped, "turns": turns,
        "cancelled_at": iso(int(cancelled_at)) if cancelled_at else None,
    }  # fmt: skip


async def start_turns(
    rt: ApiServices, starts: dict[str, str], needle: str = '"start":"st-'
) -> dict[str, dict[str, Any]]:
    """What the turns of each start (id -> its flow) did, from the outcome events: runs
    ``started``, ``deferred`` by quiet hours, ``skipped`` by reason (``cancelled`` among them).
    One pass over every shard's stream, whatever the number of starts (``needle``: what every
    wanted event's JSON holds, to filter in Redis)."""
    out: dict[str, dict[str, Any]] = {s: {"started": 0, "deferred": 0, "skipped": {}} for s in starts}
    async for _, _, event in reports.entries(rt.store, rt.config.engine.shards, needle):
        e = orjson.loads(event)
        sid = e.get("start")
        if sid not in starts or e.get("f") != starts[sid]:
            continue
        turns = out[sid]
        if e["t"] in ("started", "deferred"):
            turns[e["t"]] += 1
        elif e["t"] == "skipped":
            turns["skipped"][e["reason"]] = turns["skipped"].get(e["reason"], 0) + 1
    return out


@operation(Operation(
    "record_conversion", "journeys",
    "A conversion the CRM reports, attributed to the contact's last journey start",
    {202: Answer("recorded (attributed or not)", Recorded), 200: Answer("a repeat of an id", Recorded)},
    errors=(400, *ERR), params=(NUMBER,), body=ContactEventIn,
))  # fmt: skip
async def post_contact_event(request: web.Request) -> web.Response:
    """A conversion (a purchase, a meeting set): attributed to the last journey start that reached
    the contact within ``engine.attribution_window`` (its flow, experiment and arm), and recorded
    as a ``conversion`` outcome event. ``id`` makes a resend harmless."""
    rt = runtime(request)
    number = number_param(rt, request.match_info["number"])
    body = await read_body(request, ContactEventIn, rt)
    kind, value, eid = body.type, body.value, body.id
    r = rt.store.redis
    shard = keys.shard_of(number, rt.config.engine.shards)
    if eid is not None:
        fresh = await r.set(
            keys.conversion_seen(number, shard, eid), 1, nx=True, ex=int(rt.config.engine.dedupe_window)
        )
        if not fresh:
            return json_response({"status": "duplicate"}, 200)
    raw: dict[Any, Any] = await r.hgetall(keys.attribution(number, shard))
    touch = {k.decode(): v.decode() for k, v in raw.items()}
    now = rt.clock.now_ms()
    attributed: dict[str, Any] | None = None
    if touch and now - int(touch["at"]) <= rt.config.engine.attribution_window * 1000:
        attributed = {"flow": touch["f"], "start": touch["st"], "experiment": touch["xp"] or None,
                      "arm": touch["arm"] or None}  # fmt: skip
    e = {"t": "conversion", "c": number, "type": kind, "value": value, "at": now,
         **({"f": attributed["flow"], "start": attributed["start"], "experiment": attributed["experiment"],
             "arm": attributed["arm"]} if attributed else {})}  # fmt: skip
    cap = rt.config.engine.outcome_events_max
    await r.xadd(keys.flow_events(shard), {"e": orjson.dumps(e)}, maxlen=cap, approximate=True)
    return json_response({"status": "recorded", "attributed": attributed}, 202)


class StartCancelled(BaseModel):
    """What a cancel stopped: deliveries cancelled, by where they were waiting."""

    start: str
    cancelled: int
    scheduled: int = Field(description="waiting for send_at or the end of quiet hours")
    queued: int = Field(description="waiting for their turn on the contact's stream")
    in_lane: int = Field(description="waiting in an outbound lane for the gateway")
    too_late: int = Field(description="found already handed to a gateway (or expired): not cancelled")


@operation(Operation(
    "cancel_start", "journeys",
    "Cancel everything of a journey start not yet handed to a gateway, and say how many",
    {200: Answer("what was cancelled", StartCancelled)}, errors=(404, 401, 503),
    params=(Param("id", "the start id (st-...) the start answered"),),
))  # fmt: skip
async def cancel_start(request: web.Request) -> web.Response:
    """Stop a journey start in one call: every delivery still scheduled (send_at, quiet hours),
    queued on a contact's stream, or waiting in an outbound lane is cancelled (and any the
    scan meets in transit is stopped by the start's flag or the sender's check)."""
    return json_response(await cancel(runtime(request), request.match_info["id"]))


async def cancel(rt: ApiServices, sid: str) -> dict[str, Any]:
    """What ``DELETE /v1/starts/{id}`` does and answers (also the console's cancel button):
    NotFound for an unknown id."""
    flow: Any = await rt.store.redis.hget(keys.start_record(sid), "flow")
    if flow is None:
        raise NotFound(f"no start {sid!r}", code="start_not_found")
    done = await sends.cancel_start(rt, sid, flow.decode(), sorted(rt.gateways))
    return {"start": sid, "cancelled": done.total, **done.cancelled, "too_late": done.too_late}
