"""``POST /v1/flows/{flow}/start``: start a flow for a list of contacts."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
from aiohttp import web

from engine.api.common import json_response, number_param, read_object, runtime
from engine.api.ports import ApiServices
from engine.conversation import intake, sessions
from engine.conversation.turn import missing_fields
from engine.core import contacts, keys
from engine.core.errors import FlowErrors, NotFound, Unprocessable
from engine.crm import journeys

MAX_CONTACTS = 10_000


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
    body = await read_object(
        request, {"contacts", "audience", "params", "interrupt", "send_at", "holdout", "arms", "experiment"}
    )
    if ("contacts" in body) == ("audience" in body):
        raise Unprocessable("contacts", "give either contacts (a list of numbers) or audience (conditions)")
    params = body.get("params", {})
    if not isinstance(params, dict) or "_start" in params:
        raise Unprocessable("params", "must be an object (without _start, which is Parley's)")
    interrupt = body.get("interrupt", False)
    if not isinstance(interrupt, bool):
        raise Unprocessable("interrupt", "must be true or false")
    send_at = journeys.parse_send_at(body.get("send_at"))
    split = journeys.parse_split(name, body)
    listed = "contacts" in body
    if listed:
        numbers = await _listed(rt, body["contacts"])
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
                pipe.get(keys.session(n))
                pipe.hmget(keys.contact(n), ["f", "tz"])
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
        meta = {"id": sid, **({"arm": arm, "experiment": split.experiment} if split else {})}
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


MAX_AUDIENCE = 1_000_000


async def _listed(rt: ApiServices, raw: Any) -> list[str]:
    if not isinstance(raw, list) or not raw:
        raise Unprocessable("contacts", "must be a non-empty list of phone numbers")
    if len(raw) > MAX_CONTACTS:
        raise Unprocessable("contacts", f"at most {MAX_CONTACTS} per request (or use audience)")
    numbers: list[str] = []
    for i, n in enumerate(raw):
        if not isinstance(n, str):
            raise Unprocessable(f"contacts[{i}]", "must be a phone number string")
        numbers.append(number_param(rt, n, f"contacts[{i}]"))
    numbers = list(dict.fromkeys(numbers))  # the same person twice is one start
    missing = await contacts.missing(rt.store, numbers)
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
    for i in range(0, len(numbers), 1000):
        async with r.pipeline(transaction=False) as pipe:
            for n in numbers[i : i + 1000]:
                arm = arms.get(n, "")
                if split:
                    e = {"t": "assigned", "c": n, "f": flow, "experiment": split.experiment, "arm": arm,
                         "start": sid, "at": now}  # fmt: skip
                    cap = rt.config.engine.outcome_events_max
                    pipe.xadd(keys.flow_events(), {"e": orjson.dumps(e)}, maxlen=cap, approximate=True)
                touch: Any = {
                    "f": flow,
                    "st": sid,
                    "at": now,
                    "xp": split.experiment if split else "",
                    "arm": arm,
                }
                pipe.hset(keys.attribution(n), mapping=touch)
                pipe.expire(keys.attribution(n), window)
            await pipe.execute()
