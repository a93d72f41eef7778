"""``POST /v1/flows/{flow}/start``: start a flow for a list of contacts."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any, Literal, Self

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from engine.api.common import json_response, runtime
from engine.api.ports import ApiServices
from engine.api.schema import FLOW, OMITTED, Answer, Model, Operation, PhoneNumber, operation, read_body
from engine.conversation import intake, sessions
from engine.conversation.turn import missing_fields
from engine.core import contacts, keys
from engine.core.errors import FlowErrors, NotFound, Unprocessable
from engine.crm import journeys, listing, segments, starts_index

MAX_CONTACTS = 10_000
MAX_AUDIENCE = 1_000_000
#: What engine/crm/journeys.py's parse_send_at reads (a date, a time, a zone or none).
SEND_AT = (
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}"
    "(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\\.[0-9]{1,6})?)?)?(?:Z|[+-][0-9]{2}:[0-9]{2})?$"
)


class Condition(BaseModel):
    """One audience condition: a contact field and a test with its arguments (flows.md)."""

    model_config = ConfigDict(extra="allow", strict=True, title="Condition")
    field: Annotated[str, Field(pattern="^contact\\.")]


class ArmIn(BaseModel):
    """One arm of an experiment: its share (``weight``) and the params its starts get."""

    model_config = ConfigDict(strict=True)
    name: Annotated[
        str,
        Field(min_length=1),
        WithJsonSchema({"type": "string", "minLength": 1, "not": {"const": "holdout"}}),
    ]
    weight: Annotated[float, Field(gt=0)] = 1.0
    params: dict[str, Any] = {}


#: The ways a start names its contacts (exactly one is given).
AUDIENCES = ("contacts", "audience", "segment")


class StartIn(Model):
    """``POST /v1/flows/{flow}/start``: one of contacts, audience or segment."""

    model_config = ConfigDict(
        json_schema_extra={
            "description": "one of contacts, audience or segment",
            "oneOf": [
                {"required": [one], "not": {"anyOf": [{"required": [o]} for o in AUDIENCES if o != one]}}
                for one in AUDIENCES
            ],
        }
    )
    contacts: Annotated[
        list[PhoneNumber],
        Field(
            min_length=1,
            max_length=MAX_CONTACTS,
            description="existing contacts (404 names any that are not)",
        ),
    ] = OMITTED
    audience: Annotated[
        list[Condition], Field(min_length=1, description="conditions on contact fields; all must hold")
    ] = OMITTED
    segment: Annotated[
        str, Field(pattern=segments.NAME_RE.pattern, description="a saved segment (PUT /v1/segments/{name})")
    ] = OMITTED
    params: Annotated[
        dict[str, Any],
        Field(
            description="available to templates as params.*",
            json_schema_extra={"not": {"required": ["_start"]}},
        ),
    ] = {}
    interrupt: bool = False
    send_at: Annotated[
        str | None,
        Field(
            pattern=SEND_AT,
            description="ISO 8601; without a zone: each contact's local time",
            examples=["2026-12-02T10:00", "2026-12-02T10:00:00Z"],
        ),
    ] = None
    holdout: Annotated[float, Field(ge=0, lt=100, description="percent")] = 0
    arms: Annotated[list[ArmIn], Field(description="names unique, not holdout")] = OMITTED
    experiment: Annotated[
        str, Field(pattern="^[^|]+$", description="the assignment's name (default: the flow)")
    ] = OMITTED
    purpose: Annotated[
        Literal["service", "marketing"] | None,
        Field(description="only narrower than the flow's: a service flow may be started as marketing"),
    ] = None

    MESSAGES = {
        "contacts": f"must be a list of 1 to {MAX_CONTACTS} phone numbers (more: use audience)",
        "contacts[]": "must be a phone number string",
        "params": "must be an object (without _start, which is Parley's)",
        "interrupt": "must be true or false",
        "holdout": "must be a percentage from 0 to under 100",
        "arms[].name": "each arm needs a name",
        "arms[].weight": "must be a number above 0",
        "arms[].params": "must be an object",
        "experiment": "must be a name",
        "segment": "must be a segment name (letters, digits, _ and -)",
        "send_at": "must be an ISO 8601 time like 2026-12-02T10:00 or 2026-12-02T10:00:00Z",
        "purpose": "must be service or marketing",
    }

    @model_validator(mode="before")
    @classmethod
    def _one_of(cls, data: Any) -> Any:
        """Either list is checked only once it is the one given (as the schema's oneOf says)."""
        if isinstance(data, dict) and sum(k in data for k in AUDIENCES) != 1:
            raise Unprocessable(
                "contacts",
                "give one of contacts (a list of numbers), audience (conditions) or segment (a name)",
            )
        return data

    @model_validator(mode="after")
    def _params_are_the_callers(self) -> Self:
        if "_start" in self.params:
            raise Unprocessable("params", "must be an object (without _start, which is Parley's)")
        return self


class Skipped(BaseModel):
    contact: str
    reason: str


class StartedOne(BaseModel):
    contact: str
    event_id: str


class Started(BaseModel):
    """What a start did: counts always; who, for a list of contacts; arms, for an experiment."""

    flow: str
    start: str
    requested: int
    queued: int
    scheduled: int
    skipped_counts: dict[str, int]
    started: list[StartedOne] = []
    skipped: list[Skipped] = []
    arms: dict[str, int] = {}


class Loaded(BaseModel):
    version: int
    digest: str


class FlowsLoaded(BaseModel):
    flows: dict[str, Loaded]


ERR = (401, 422, 503)


@operation(Operation(
    "reload_flows", "flows", "Load the flows directory again",
    {200: Answer("the flows now in use", FlowsLoaded)}, errors=ERR,
))  # fmt: skip
async def reload_flows(request: web.Request) -> web.Response:
    """Reload the flows directory: 200 with the loaded versions, or 422 listing every problem
    (nothing changes then). Conversations in progress finish on the version they started with."""
    rt = runtime(request)
    try:
        registry = await rt.reload_flows()
    except FlowErrors as exc:
        return json_response(
            {
                "error": {
                    "code": "invalid_flows",
                    "message": f"{len(exc.errors)} problem(s); the flows in use are unchanged",
                    "problems": [str(e) for e in exc.errors],
                }
            },
            422,
        )
    return json_response(
        {"flows": {f.name: {"version": f.version, "digest": f.digest} for f in registry.flows.values()}}
    )


@operation(Operation(
    "start_flow", "journeys", "Start a flow for contacts (202 once every start is in Redis)",
    {202: Answer("queued", Started)}, errors=(400, 404, *ERR), params=(FLOW,), body=StartIn,
))  # fmt: skip
async def start_flow(request: web.Request) -> web.Response:
    """Queue a start per contact (a list, or an ``audience``), now or at ``send_at``, split by
    ``arms`` and ``holdout``; 202 once every start is in Redis (engine/crm/journeys.py).

    Listed contacts must exist (404 names the missing ones, nothing is started). A contact
    already waiting in a conversation is skipped (reported) unless ``interrupt`` is true.
    """
    rt = runtime(request)
    name = request.match_info["flow"]
    if rt.flows.get(name) is None:
        raise NotFound(
            f"no flow {name!r} (loaded: {', '.join(sorted(rt.flows.flows)) or 'none'})",
            code="flow_not_found",
        )
    start = await read_body(request, StartIn, rt)
    declared = rt.flows.get(name)
    if start.purpose == "service" and declared is not None and declared.purpose == "marketing":
        raise Unprocessable("purpose", f"flow {name!r} is marketing: it cannot be started as service")
    # A service flow started as marketing: its runs need the marketing opt-in (turn.py reads it).
    narrowed = {"purpose": "marketing"} if start.purpose == "marketing" else {}
    # The domain reads what the model checked: send_at's calendar, the split, the conditions' tests.
    body = start.model_dump(exclude_unset=True)
    params, interrupt = start.params, start.interrupt
    send_at = journeys.parse_send_at(start.send_at)
    split = journeys.parse_split(name, body)
    listed = start.contacts is not None
    segment_name: str | None = start.segment
    if listed:
        numbers = await _listed(rt, start.contacts)
    elif segment_name is not None:  # through the listing index: no scan
        chosen = (await segments.need(rt.store, segment_name)).filter()
        numbers = [c.number async for c, _ in listing.every(rt.store, rt.config.engine.shards, chosen)]
        if len(numbers) > MAX_AUDIENCE:
            raise Unprocessable(
                "segment", f"selects {len(numbers)} contacts; at most {MAX_AUDIENCE} per start"
            )
    else:
        numbers = await journeys.select(rt, journeys.parse_audience(body["audience"]))
        if len(numbers) > MAX_AUDIENCE:
            raise Unprocessable(
                "audience", f"selects {len(numbers)} contacts; at most {MAX_AUDIENCE} per start"
            )

    flow = rt.flows.get(name)
    assert flow is not None
    now = rt.clock.now_ms()
    sid = journeys.new_start_id(now)
    arms = await _assign(rt, split, numbers) if split else {}
    skipped: list[dict[str, str]] = []
    ready: list[tuple[str, str | None]] = []
    for i in range(0, len(numbers), 1000):
        chunk = numbers[i : i + 1000]
        async with rt.store.redis.pipeline(transaction=False) as pipe:
            for n in chunk:
                s = keys.shard_of(n, rt.config.engine.shards)
                pipe.get(keys.session(n, s))
                pipe.hmget(keys.contact(n, s), ["f", "tz"])
            loaded = await pipe.execute()
        for n, state, (fields, tz) in zip(chunk, loaded[::2], loaded[1::2], strict=True):
            lacking = missing_fields(flow, contacts.Contact(n, orjson.loads(fields or b"{}")))
            if arms.get(n) == journeys.HOLDOUT:
                skipped.append({"contact": n, "reason": "holdout"})
            elif lacking:
                skipped.append({"contact": n, "reason": "missing_fields", "fields": ",".join(lacking)})
            elif not interrupt and sessions.state_of(state).get("n") is not None:
                skipped.append({"contact": n, "reason": "in_conversation"})
            else:
                ready.append((n, tz.decode() if tz else None))
    by_arm = {a.name: a for a in split.arms} if split else {}
    starts: list[tuple[str, dict[str, Any], int | None]] = []
    for n, tz in ready:
        arm = arms.get(n, "")
        meta = {"id": sid, **({"arm": arm, "experiment": split.experiment} if split else {}), **narrowed}
        p = {**params, **(by_arm[arm].params if arm in by_arm else {}), "_start": meta}
        starts.append((n, p, journeys.due_ms(rt, send_at, n, tz) if send_at else None))
    event_ids = await intake.queue_starts(rt, name, starts, interrupt)
    scheduled = event_ids.count("")  # waiting as timers
    counts = {"requested": len(numbers), "queued": len(starts) - scheduled, "scheduled": scheduled}
    reasons = Counter(x["reason"] for x in skipped)
    await _record(rt, sid, name, now, counts, reasons, split, arms, numbers)
    out: dict[str, Any] = {"flow": name, "start": sid, **counts, "skipped_counts": dict(reasons)}
    if listed:  # a short list: say who, as before
        out["started"] = [{"contact": n, "event_id": i} for (n, _), i in zip(ready, event_ids, strict=True)]
        out["skipped"] = skipped
    if split:
        out["arms"] = dict(Counter(arms.values()))
    return json_response(out, 202)


async def _listed(rt: ApiServices, numbers: list[str]) -> list[str]:
    numbers = list(dict.fromkeys(numbers))  # the same person twice is one start
    missing = await contacts.missing(rt.store, rt.config.engine.shards, numbers)
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise NotFound(
            f"unknown contacts: {shown} (create them with PUT /v1/contacts/{{number}})",
            code="contact_not_found",
        )
    return numbers


async def _assign(rt: ApiServices, split: journeys.Split, numbers: list[str]) -> dict[str, str]:
    """Each contact's arm: the one it already had in this experiment, else its bucket's (kept)."""
    key = keys.assignments(split.experiment)
    out: dict[str, str] = {}
    for i in range(0, len(numbers), 1000):
        chunk = numbers[i : i + 1000]
        had: list[Any] = await rt.store.redis.hmget(key, chunk)
        fresh: Any = {n: split.assign(n) for n, h in zip(chunk, had, strict=True) if h is None}
        if fresh:
            await rt.store.redis.hset(key, mapping=fresh)
        out.update({n: h.decode() for n, h in zip(chunk, had, strict=True) if h is not None})
        out.update(fresh)
    return out


async def _record(
    rt: ApiServices, sid: str, flow: str, now: int, counts: dict[str, int], reasons: Counter[str],
    split: journeys.Split | None, arms: dict[str, str], numbers: list[str],
) -> None:  # fmt: skip
    """The start's counts, every assignment as an outcome event, and each contact's last touch."""
    window = int(rt.config.engine.attribution_window)
    r = rt.store.redis
    record: Any = {
        "flow": flow, "at": now, **counts, **{f"skipped_{k}": v for k, v in reasons.items()},
        **({"experiment": split.experiment} if split else {}),
    }  # fmt: skip
    await r.hset(keys.start_record(sid), mapping=record)
    await r.expire(keys.start_record(sid), journeys.START_TTL_S)
    await starts_index.add(rt.store, sid, now)
    for i in range(0, len(numbers), 1000):
        async with r.pipeline(transaction=False) as pipe:
            for n in numbers[i : i + 1000]:
                shard = keys.shard_of(n, rt.config.engine.shards)  # its events and touch live there
                arm = arms.get(n, "")
                if split:
                    e = {"t": "assigned", "c": n, "f": flow, "experiment": split.experiment, "arm": arm,
                         "start": sid, "at": now}  # fmt: skip
                    cap = rt.config.engine.outcome_events_max
                    pipe.xadd(keys.flow_events(shard), {"e": orjson.dumps(e)}, maxlen=cap, approximate=True)
                touch: Any = {
                    "f": flow,
                    "st": sid,
                    "at": now,
                    "xp": split.experiment if split else "",
                    "arm": arm,
                }
                pipe.hset(keys.attribution(n, shard), mapping=touch)
                pipe.expire(keys.attribution(n, shard), window)
            await pipe.execute()
