"""One turn: load a contact's state, decide with the flow, commit, in two Redis round trips.

    worker                       Redis
      |-- HGETALL session, contact -->|   1. load (one pipelined round trip)
      |   decide (pure Python)        |   2. decide: no I/O
      |-- EVALSHA commit ------------>|   3. commit: CAS on the session version; writes state,
      |<-- ok / dup / conflict -------|      message log and replies atomically

Two writers for one contact (a redelivered event racing its first delivery, or two workers
during a hand-over) both load version v; the first commit moves it to v+1, the second gets
``conflict`` and decides again from the new state: retried, never merged. An event that was
already applied (the session records the last applied event per shard) commits nothing and
returns ``dup``, so a redelivery never sends twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from engine import keys
from engine.contacts import Contact
from engine.errors import RenderError
from engine.events import Event
from engine.flows import Decision, resume, start
from engine.numbers import mask
from engine.sms import encoding_of

if TYPE_CHECKING:
    from engine.runtime import Runtime

log = logging.getLogger(__name__)

#: A turn that loses the session race this many times in a row is given up (and redelivered).
MAX_ATTEMPTS = 8


@dataclass
class TurnDone:
    """What a turn did, for listeners (``parley chat``) and metrics."""

    event: Event
    result: str  # replied | no_reply | started | skipped_active | failed | duplicate
    flow: str = ""
    outbound_ids: list[str] = field(default_factory=list)
    outcome: str | None = None


@dataclass
class _Plan:
    result: str
    flow: str = ""
    state: dict[str, Any] | None = None  # None: leave the stored state as it is
    ttl: int = 86400
    texts: list[str] = field(default_factory=list)
    node: str | None = None
    outcome: str | None = None


async def run_turn(rt: Runtime, ev: Event) -> TurnDone:
    """Process one event to completion (retrying lost races); raises only on Redis failure."""
    clock = rt.clock
    picked = clock.monotonic()
    stages = {"queue_wait": max(0.0, (clock.now_ms() - ev.accepted_ms) / 1000)}
    rt.metrics.turn_started()
    try:
        for _ in range(MAX_ATTEMPTS):
            t0 = clock.monotonic()
            async with rt.store.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(keys.session(ev.contact))
                pipe.hgetall(keys.contact(ev.contact))
                sess_h, contact_h = await pipe.execute()
            t1 = clock.monotonic()
            version = int(sess_h.get(b"v", 0))
            state = orjson.loads(sess_h[b"d"]) if b"d" in sess_h else {}
            contact = Contact.from_hash(ev.contact, contact_h) or Contact(ev.contact)
            plan = _decide(rt, ev, state, contact)
            t2 = clock.monotonic()
            status, outbound_ids = await _commit(rt, ev, version, plan)
            t3 = clock.monotonic()
            if status == "conflict":
                rt.metrics.turn_retried()
                continue
            stages.update(load=t1 - t0, decide=t2 - t1, commit=t3 - t2)
            result = "duplicate" if status == "dup" else plan.result
            rt.metrics.turn_done(plan.flow, result, t3 - picked + stages["queue_wait"], stages)
            return TurnDone(ev, result, plan.flow, outbound_ids if status == "ok" else [], plan.outcome)
    except BaseException:
        rt.metrics.turn_done("", "error", clock.monotonic() - picked, {})
        raise
    rt.metrics.turn_done("", "error", clock.monotonic() - picked, {})
    raise RuntimeError(f"turn {ev.ref}: lost the session race {MAX_ATTEMPTS} times")


def _decide(rt: Runtime, ev: Event, state: dict[str, Any], contact: Contact) -> _Plan:
    """Pure: from the loaded state and the event, what to say and what to store."""
    now = rt.clock.now_ms()
    ended_ttl = int(rt.config.engine.dedupe_window)
    active = state.get("n") is not None
    flow = rt.flows.get(state["f"]) if active else None
    view = contact.template_view()
    if active and (flow is None or state["n"] not in flow.nodes):
        # The flow was removed or no longer has this node: end cleanly instead of guessing.
        state = {**state, "n": None, "o": "flow_changed", "ea": now}
        active, flow = False, None

    decision: Decision | None = None
    try:
        if ev.kind == "in":
            if active and flow is not None:
                decision = resume(flow, state, view, ev.text, now)
            else:
                flow = rt.flows.by_trigger(ev.text)
                if flow is not None:
                    decision = start(flow, view, {}, now)
            if decision is None:
                return _Plan("no_reply", state=state or None, ttl=ended_ttl)
        elif ev.kind == "start":
            flow = rt.flows.get(ev.flow)
            if flow is None:
                log.warning("start skipped: flow %s no longer loaded contact=%s", ev.flow, mask(ev.contact))
                return _Plan("failed", flow=ev.flow, ttl=ended_ttl)
            if active and not ev.interrupt:
                return _Plan("skipped_active", flow=ev.flow, ttl=ended_ttl)
            decision = start(flow, view, ev.params, now)
        else:
            log.error("unknown event kind %r in %s; dropped", ev.kind, ev.ref)
            return _Plan("failed", ttl=ended_ttl)
    except RenderError as exc:
        assert flow is not None
        log.error("turn failed flow=%s contact=%s event=%s: %s", flow.name, mask(ev.contact), ev.ref, exc)
        failed = {**state, "f": flow.name, "n": None, "o": "failed", "ea": now, "err": str(exc)}
        return _Plan("failed", flow=flow.name, state=failed, ttl=ended_ttl, outcome="failed")

    assert flow is not None
    result = "started" if ev.kind == "start" or not active else "replied"
    return _Plan(
        result,
        flow=flow.name,
        state=decision.state,
        ttl=int(flow.expire_after) if decision.active else ended_ttl,
        texts=decision.messages,
        node=decision.state.get("n"),
        outcome=decision.outcome,
    )


async def _commit(rt: Runtime, ev: Event, version: int, plan: _Plan) -> tuple[str, list[str]]:
    now = rt.clock.now_ms()
    gateway = rt.reply_gateway(ev.gateway if ev.kind == "in" else "")
    records: list[str] = []
    if ev.kind == "in":
        rec = {
            "id": f"in-{ev.msg_base}", "dir": "in", "text": ev.text, "from": ev.contact, "to": ev.to,
            "gateway": ev.gateway, "provider_id": ev.provider_id, "status": "received",
            "at": ev.accepted_ms, "flow": plan.flow or None, "history": [["received", ev.accepted_ms]],
        }  # fmt: skip
        records += [f"in-{ev.msg_base}", orjson.dumps(rec).decode()]
    outbound: list[str] = []
    ids: list[str] = []
    for k, text in enumerate(plan.texts):
        mid = f"out-{ev.msg_base}-{k}"
        status, error = ("queued", None) if gateway else ("failed", "no gateway can send this reply")
        enc = encoding_of(text)
        rec = {
            "id": mid, "dir": "out", "text": text, "to": ev.contact, "gateway": gateway,
            "status": status, "at": now, "flow": plan.flow, "cause": ev.ref,
            "encoding": enc.name, "segments": enc.segments, "history": [[status, now]],
        }  # fmt: skip
        if error:
            rec["error"] = error
        records += [mid, orjson.dumps(rec).decode()]
        if gateway:
            outbound += [mid, text]
            ids.append(mid)
    res = await rt.store.run(
        "commit",
        keys=[
            keys.session(ev.contact),
            keys.message_index(ev.contact),
            keys.message_records(ev.contact),
            keys.outbound_stream(gateway or "-"),
        ],
        args=[
            version, ev.ref, orjson.dumps(plan.state).decode() if plan.state is not None else "",
            max(plan.ttl, 1), rt.config.engine.message_log_size, ev.contact,
            len(records) // 2, len(outbound) // 2, *records, *outbound,
        ],
    )  # fmt: skip
    return res[0].decode(), ids
