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
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from engine.conversation import inbox, outcomes, sessions
from engine.conversation import single as singles
from engine.conversation.events import Event
from engine.conversation.ports import TurnServices
from engine.core import keys
from engine.core.batching import Add
from engine.core.contacts import Contact
from engine.core.errors import RenderError
from engine.core.numbers import mask
from engine.core.scripts.commit import CommitArgs, ContactChange, Outbound
from engine.core.sms import encoding_of
from engine.flows import Decision, Flow, call_result, expire, resume, start, timeout, timers_of
from engine.flows import versions as flow_versions
from engine.flows.campaigns import TIMER_KIND as CAMPAIGN_TIMER
from engine.flows.runner import EXPIRED
from engine.governance import consent as governance
from engine.governance.consent import Consent, Keyword

log = logging.getLogger(__name__)

#: A turn that loses the session race this many times in a row is given up (and redelivered).
MAX_ATTEMPTS = 8


@dataclass
class TurnDone:
    """What a turn did, for listeners (``parley chat``) and metrics."""

    event: Event
    #: replied | no_reply | started | skipped_active | failed | duplicate | handed_off | inbox
    #: | inbox_replied | inbox_closed | inbox_returned | skipped_handed_off | stale_inbox ...
    result: str
    flow: str = ""
    outbound_ids: list[str] = field(default_factory=list)
    outcome: str | None = None
    #: The commit acknowledged the event's stream entry (``run_turn(..., ack_group=...)``).
    acked: bool = False


#: An active session outlives its flow's expiry by this much, so the expiry timer finds it.
EXPIRY_GRACE_S = 86400


@dataclass
class _Plan:
    result: str
    flow: str = ""
    state: dict[str, Any] | None = None  # None: leave the stored state as it is
    texts: list[str] = field(default_factory=list)
    outcome: str | None = None
    ttl: int = 0
    timers_remove: list[str] = field(default_factory=list)
    timers_add: list[tuple[str, int]] = field(default_factory=list)
    #: The contact's fields and tags after this turn, when the flow changed them.
    contact: Contact | None = None
    #: A CRM webhook job to enqueue with the commit.
    call: dict[str, Any] | None = None
    #: Messages that pass the gate even when the contact opted out (the opt-out confirmation,
    #: HELP answers): their indexes in ``texts``.
    system: set[int] = field(default_factory=set)
    #: A consent change to record with the commit: (status, source, cause).
    consent: tuple[str, str, str] | None = None
    #: The customer's text has an opt-out keyword in something else: flag it for a person.
    review: bool = False
    #: The inbox change to commit (engine/conversation/inbox.py; CommitArgs.inbox) and its
    #: outcome events.
    inbox: tuple[str, ...] = ()
    events: list[str] = field(default_factory=list)
    #: A single message (``send`` event): its id, gateway, lane and what became of it.
    single: singles.Single | None = None


async def run_turn(rt: TurnServices, ev: Event, ack_group: str = "") -> TurnDone:
    """Process one event to completion (retrying lost races); raises only on Redis failure.
    ``ack_group``: the consumer group that read the event: its entry is acknowledged (and
    deleted) by the commit itself, atomically with what the turn wrote (``TurnDone.acked``)."""
    clock = rt.clock
    if ev.kind == "timer" and ev.timer_kind == "d":
        ev = ev.undeferred()
    if ev.kind == "inbox" and "m" not in ev.params:
        # A person's reply keeps the id the API answered with, even if quiet hours defer it.
        ev = replace(ev, params={**ev.params, "m": inbox.reply_id(ev.shard, ev.entry_id)})
    picked = clock.monotonic()
    stages = {"queue_wait": max(0.0, (clock.now_ms() - ev.accepted_ms) / 1000)}
    rt.metrics.turn_started()
    original = ev  # a campaign timer becomes a start anew on each attempt
    try:
        for _ in range(MAX_ATTEMPTS):
            ev = original
            t0 = clock.monotonic()
            try:
                sess_raw, contact_h, consent_h, handoff_h, *extra = await rt.store.coalescer.run(_load(ev))
            except ResponseError as exc:
                if "WRONGTYPE" not in str(exc) or not await sessions.migrate(
                    rt.store.redis, keys.session(ev.contact, ev.shard)
                ):
                    raise
                continue  # an older build's session, now converted: load again
            t1 = clock.monotonic()
            version, _, state = sessions.unpack(sess_raw)
            await flow_versions.ensure(rt.store, rt.flows, state)
            contact = Contact.from_hash(ev.contact, contact_h) or Contact(ev.contact)
            consent = Consent.from_hash(consent_h)
            early: _Plan | None = None
            follow: list[tuple[str, int]] = []
            if ev.kind == "timer" and ev.timer_kind == CAMPAIGN_TIMER:
                ev, early, follow = _campaign(rt, ev, contact)
            reading = (
                rt.keywords.read(ev.text, in_conversation=state.get("n") is not None)
                if ev.kind == "in"
                else governance.Reading()
            )
            why = singles.verdict(ev, extra, clock.now_ms())  # a cancelled or expired unit
            governed = early or _governed(rt, ev, state, contact, consent, reading.keyword)
            if why is not None and ev.kind == "start":
                governed = _Plan(f"skipped_{why}", flow=ev.flow)
            handoff = inbox.Handoff.from_hash(ev.contact, handoff_h)
            plan = (
                governed or _inboxed(rt, ev, state, contact, handoff) or _decide(rt, ev, state, contact, why)
            )
            if governed is None and handoff is None:
                _to_inbox(rt, ev, plan)
            plan.review = governed is None and reading.review
            if plan.result == "skipped_no_marketing_consent":
                rt.metrics.gate("no_marketing_consent")  # as the commit script's refusals are
            until = _quiet_until(rt, ev, plan, contact)
            if until is not None:
                rt.metrics.gate("deferred", len(plan.texts))
                # nothing changes until the window opens
                plan = _Plan("deferred", flow=plan.flow, single=plan.single)
            _settle(rt, ev, state, plan)
            if until is not None:
                plan.timers_add.append((keys.timer_member(ev.contact, "d", ev.deferred_token()), until))
            _campaign_timers(rt, plan, contact, follow)
            t2 = clock.monotonic()
            status, outbound_ids = await _commit(
                rt, ev, version, plan, state, answered=governed is None, ack_group=ack_group
            )
            t3 = clock.monotonic()
            if status == "conflict":
                rt.metrics.turn_retried()
                continue
            stages.update(load=t1 - t0, decide=t2 - t1, commit=t3 - t2)
            if status == "ok" and plan.review:
                rt.metrics.opt_out_review()
            result = "duplicate" if status == "dup" else plan.result
            rt.metrics.turn_done(plan.flow, result, t3 - picked + stages["queue_wait"], stages)
            ids = outbound_ids if status == "ok" else []
            return TurnDone(ev, result, plan.flow, ids, plan.outcome, acked=bool(ack_group))
    except BaseException:
        rt.metrics.turn_done("", "error", clock.monotonic() - picked, {})
        raise
    rt.metrics.turn_done("", "error", clock.monotonic() - picked, {})
    raise RuntimeError(f"turn {ev.ref}: lost the session race {MAX_ATTEMPTS} times")


def _load(ev: Event) -> Add:
    number, shard = ev.contact, ev.shard

    async def add(pipe: Pipeline) -> None:
        pipe.get(keys.session(number, shard))
        pipe.hgetall(keys.contact(number, shard))
        pipe.hgetall(keys.governance(number, shard))
        pipe.hgetall(keys.handoff(number, shard))
        singles.load_extra(ev, pipe)  # a cancellable event: its hand-over, in the same round trip

    return add


def _settle(rt: TurnServices, ev: Event, old: dict[str, Any], plan: _Plan) -> None:
    """Pure: the session TTL and the timer changes that follow from the old and new state."""
    new = plan.state if plan.state is not None else old
    new_flow = rt.flows.for_state(new) if new else None
    old_flow = rt.flows.for_state(old) if old else None
    if new.get("n") is not None and new_flow is not None:
        plan.ttl = int(new_flow.expire_after) + EXPIRY_GRACE_S
    else:
        plan.ttl = int(rt.config.engine.dedupe_window)
    before, after = timers_of(old_flow, old), timers_of(new_flow, new)
    plan.timers_remove = [keys.timer_member(ev.contact, k, t) for (k, t) in before if (k, t) not in after]
    plan.timers_add = [
        (keys.timer_member(ev.contact, k, t), due)
        for (k, t), due in after.items()
        if before.get((k, t)) != due
    ]


def _campaign(
    rt: TurnServices, ev: Event, contact: Contact
) -> tuple[Event, _Plan | None, list[tuple[str, int]]]:
    """A fired campaign timer (engine/flows/campaigns.py), judged against the contact as it is
    now: the journey start it stands for (so the gate applies as to any start, and its outcome
    events carry the campaign), or a plan that starts nothing (``stale_timer``: the campaign,
    event or field changed since; ``skipped_late``); and the event's next fire, if any."""
    zone = rt.quiet.zone_of(ev.contact, contact.timezone)
    f = rt.campaigns.fired(ev.contact, ev.timer_token, contact.fields, zone, rt.clock.now_ms())
    follow = [f.next] if f.next is not None else []
    if f.event is None or f.verdict == "stale":
        return ev, _Plan("stale_timer"), follow
    meta = {"campaign": f.campaign, "campaign_event": f.event.id}
    start_ev = Event(ev.shard, ev.entry_id, "start", ev.contact, ev.accepted_ms, flow=f.event.flow,
                     params={"_start": meta}, interrupt=f.event.interrupt)  # fmt: skip
    return start_ev, _Plan("skipped_late", flow=f.event.flow) if f.verdict == "late" else None, follow


def _campaign_timers(rt: TurnServices, plan: _Plan, contact: Contact, follow: list[tuple[str, int]]) -> None:
    """Pure: the campaign timers this turn moves, committed with it: a fired event's next fire,
    and the fires of the events whose date field the flow changed (none if it was cleared)."""
    add = dict(follow)
    remove: list[str] = []
    if plan.contact is not None and rt.campaigns.fields:
        zone = rt.quiet.zone_of(contact.number, contact.timezone)
        gone, moved = rt.campaigns.changed(
            contact.number, contact.fields, plan.contact.fields, zone, rt.clock.now_ms()
        )
        add.update(moved)
        remove = [m for m in gone if m not in add]
    if add or remove:
        plan.timers_remove = [*plan.timers_remove, *remove]
        plan.timers_add = [*plan.timers_add, *add.items()]


def _customer_led(ev: Event) -> bool:
    """The customer's own text, the CRM's answer to a request their text made, or a person's
    reply to a contact handed off to them (a reply, as the gate sees it)."""
    return ev.kind in ("in", "call") or (ev.kind == "inbox" and ev.params.get("do") == "reply")


def _inboxed(
    rt: TurnServices, ev: Event, state: dict[str, Any], contact: Contact, handoff: inbox.Handoff | None
) -> _Plan | None:
    """Pure: what a contact in the inbox does instead of a flow (None: not handed off, the flow
    decides). Its texts are kept for a person; a flow start is skipped; a person's reply is
    sent (through the gate, in commit.lua), close takes it out, return starts a flow."""
    now = rt.clock.now_ms()
    if handoff is None:
        return _Plan("stale_inbox") if ev.kind == "inbox" else None
    if ev.kind == "in":
        m = f"in-{ev.msg_base}"
        return _Plan("inbox", inbox=("text",), events=[inbox.event(ev.contact, "text", now, m=m)])
    if ev.kind == "start":
        return _Plan("skipped_handed_off", flow=ev.flow)
    if ev.kind != "inbox":
        return None  # a timer or CRM answer of the run that ended: stale, as the flow finds
    by, action = str(ev.params.get("by", "")), ev.params.get("do")
    if action == "reply":
        mid = str(ev.params["m"])
        return _Plan(
            "inbox_replied", texts=[str(ev.params.get("x", ""))], inbox=("reply", by),
            events=[inbox.event(ev.contact, "replied", now, by=by, m=mid)],
        )  # fmt: skip
    if action == "close":
        return _Plan("inbox_closed", inbox=("close",), events=[inbox.event(ev.contact, "closed", now, by=by)])
    if action == "return":
        begin = replace(ev, kind="start", params=dict(ev.params.get("sp") or {}), interrupt=True)
        plan = _decide(rt, begin, state, contact)
        if plan.result != "started":  # the flow is gone, lacks fields or failed: stays in the inbox
            log.warning("return to %s failed for contact=%s: %s", ev.flow, mask(ev.contact), plan.result)
            return plan
        returned = inbox.event(ev.contact, "returned", now, by=by, next=ev.flow)
        plan.events = [returned, *plan.events]
        if not plan.inbox:  # the flow may hand the contact off again at once
            plan.inbox = ("close",)
        plan.result = "inbox_returned"
        return plan
    log.error("unknown inbox action %r in %s; dropped", action, ev.ref)
    return _Plan("failed")


def _to_inbox(rt: TurnServices, ev: Event, plan: _Plan) -> None:
    """A text that matched no conversation goes to the inbox when ``engine.unmatched: inbox``."""
    if ev.kind == "in" and plan.result == "no_reply" and rt.config.engine.unmatched == "inbox":
        plan.result = "handed_off"
        plan.inbox = ("open", inbox.UNMATCHED, "")
        now, why = rt.clock.now_ms(), inbox.UNMATCHED
        plan.events.append(inbox.event(ev.contact, "handed_off", now, why=why, m=f"in-{ev.msg_base}"))


def _quiet_until(rt: TurnServices, ev: Event, plan: _Plan, contact: Contact) -> int | None:
    """When this turn may send, if it sends something business-started in quiet hours."""
    if not rt.quiet.enabled or not plan.texts:
        return None
    if _customer_led(ev) and rt.config.governance.quiet_allows_replies:
        return None
    if all(k in plan.system for k in range(len(plan.texts))):
        return None
    return rt.quiet.next_allowed(rt.clock.now_ms(), ev.contact, contact.timezone)


def _governed(
    rt: TurnServices, ev: Event, state: dict[str, Any], contact: Contact, consent: Consent, kw: Keyword | None
) -> _Plan | None:
    """Pure: what consent decides before any flow does, or None to let the flow decide.

    A keyword (``kw``: the whole message, or a request to stop in other words, as
    ``Keywords.read`` found it) wins over any conversation: STOP ends it with outcome
    ``opted_out`` and one confirmation (none if already opted out); START opts back in; HELP
    answers and leaves the conversation where it is; STOP PROMO stops offers alone. Any other
    text from an opted-out or suppressed contact is logged and answered by nothing: it never
    re-opts anyone in. A flow start for such a contact is skipped, and so is a marketing start
    (by a journey or a keyword) for a contact without a marketing opt-in."""
    now = rt.clock.now_ms()
    if ev.kind == "in":
        if kw is not None:
            text = rt.keywords.message(kw.kind, contact.language, kw.language)
            if kw.kind == governance.HELP:
                return _Plan("help", flow=state.get("f", ""), texts=[text], system={0})
            if kw.kind == governance.OPT_OUT_MARKETING:
                return _marketing_opt_out(rt, ev, state, consent, text, now)
            if kw.kind == governance.OPT_IN:
                return _Plan(
                    "opted_in", flow=state.get("f", ""), texts=[text], system={0},
                    consent=(governance.OPTED_IN, "keyword", ev.text),
                )  # fmt: skip
            ended = None
            if state.get("n") is not None:
                ended = {**state, "n": None, "o": "opted_out", "ea": now}
            again = consent.status == governance.OPTED_OUT
            return _Plan(
                "opted_out", flow=state.get("f", ""), state=ended, texts=[] if again else [text],
                system=set() if again else {0}, outcome="opted_out" if ended else None,
                consent=(governance.OPTED_OUT, "keyword", ev.text),
            )  # fmt: skip
        if consent.silenced:
            return _Plan("silenced", flow=state.get("f", ""))
        if state.get("n") is None:  # a keyword may start a flow: not a marketing one without consent
            hit = rt.flows.by_keyword(ev.text)
            if hit is not None and not consent.allows(hit[0].purpose):
                return _Plan("skipped_no_marketing_consent", flow=hit[0].name)
    elif ev.kind == "start" and consent.silenced:
        reason = "suppressed" if consent.suppressed else "opted_out"
        log.info("start skipped flow=%s contact=%s: %s", ev.flow, mask(ev.contact), reason)
        return _Plan(f"skipped_{reason}", flow=ev.flow)
    elif ev.kind == "start" and not consent.allows(_start_purpose(rt, ev)):
        log.info("start skipped flow=%s contact=%s: no marketing consent", ev.flow, mask(ev.contact))
        return _Plan("skipped_no_marketing_consent", flow=ev.flow)
    return None


def _marketing_opt_out(
    rt: TurnServices, ev: Event, state: dict[str, Any], consent: Consent, text: str, now: int
) -> _Plan:
    """STOP PROMO (``opt_out_marketing``): the marketing consent becomes opted_out, a marketing
    conversation in progress ends ``opted_out``, a service one goes on; one confirmation (none
    when offers were already stopped, or every message was)."""
    flow = state.get("f", "")
    ended = None
    if state.get("n") is not None and _run_purpose(rt, state) == governance.MARKETING:
        ended = {**state, "n": None, "o": "opted_out", "ea": now}
    quiet = consent.silenced or consent.marketing == governance.OPTED_OUT
    return _Plan(
        "marketing_opted_out", flow=flow, state=ended, texts=[] if quiet else [text],
        system=set() if quiet else {0}, outcome="opted_out" if ended else None,
        consent=(governance.MARKETING_PREFIX + governance.OPTED_OUT, "keyword", ev.text),
    )  # fmt: skip


def _start_purpose(rt: TurnServices, ev: Event) -> str:
    """A journey start's purpose: marketing if its flow is, or the start said so (only narrower)."""
    flow = rt.flows.get(ev.flow)
    said = (ev.params.get("_start") or {}).get("purpose")
    if said == governance.MARKETING or (flow is not None and flow.purpose == governance.MARKETING):
        return governance.MARKETING
    return governance.SERVICE


def _run_purpose(rt: TurnServices, state: dict[str, Any]) -> str:
    """The purpose of the run ``state`` holds: its flow's, or marketing if started as such."""
    if state.get("pu") == governance.MARKETING:
        return governance.MARKETING
    flow = rt.flows.for_state(state) if state.get("f") else None
    return flow.purpose if flow is not None else governance.SERVICE


def _decide(
    rt: TurnServices, ev: Event, state: dict[str, Any], contact: Contact, why: str | None = None
) -> _Plan:
    """Pure: from the loaded state and the event, what to say and what to store."""
    now = rt.clock.now_ms()
    if ev.kind == "send":  # a single message: no flow, the session stays as it is
        single, texts = singles.decide(ev, contact.template_view(), why)
        return _Plan("queued" if texts else single.status, texts=texts, single=single)
    active = state.get("n") is not None
    flow = rt.flows.for_state(state) if active else None
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
                hit = rt.flows.by_keyword(ev.text)
                flow = hit[0] if hit else None
                if hit is not None and not missing_fields(hit[0], contact):
                    decision = start(hit[0], view, {**rt.config.engine.flow_params, **hit[1]}, now)
            if decision is None:
                return _Plan("no_reply", state=state or None)
        elif ev.kind == "start":
            flow = rt.flows.get(ev.flow)
            if flow is None:
                log.warning("start skipped: flow %s no longer loaded contact=%s", ev.flow, mask(ev.contact))
                return _Plan("failed", flow=ev.flow)
            if active and not ev.interrupt:
                return _Plan("skipped_active", flow=ev.flow)
            lacking = missing_fields(flow, contact)
            if lacking:
                log.info(
                    "start skipped flow=%s contact=%s missing=%s",
                    flow.name,
                    mask(ev.contact),
                    ",".join(lacking),
                )
                return _Plan("skipped_missing_fields", flow=ev.flow)
            decision = start(flow, view, {**rt.config.engine.flow_params, **ev.params}, now)
        elif ev.kind == "timer":
            decision = _fire(flow, state, view, ev, now)
            if decision is None:  # the conversation moved on since the timer was set
                return _Plan("stale_timer", flow=state.get("f", ""))
        elif ev.kind == "call":
            node = flow.nodes.get(state["n"]) if flow is not None and active else None
            if node is None or node.call is None or ev.timer_token != f"{state['n']}@{state.get('ws')}":
                return _Plan("stale_call", flow=state.get("f", ""))
            assert flow is not None
            decision = call_result(flow, state, view, ev.ok, orjson.loads(ev.text or "null"), now)
        else:
            log.error("unknown event kind %r in %s; dropped", ev.kind, ev.ref)
            return _Plan("failed")
        assert flow is not None
        if decision.next_flow is not None:
            flow, decision = _hand_off(rt, flow, decision, view, now)
    except RenderError as exc:
        return _render_failed(rt, ev, state, flow, contact, exc, now)

    handed: tuple[str, ...] = ()
    handed_events: list[str] = []
    if decision.handoff is not None:
        handed = ("open", decision.handoff, flow.name)
        cause = {"m": f"in-{ev.msg_base}"} if ev.kind == "in" else {}
        handed_events = [
            inbox.event(ev.contact, "handed_off", now, why=decision.handoff, f=flow.name, **cause)
        ]
    changed = None
    if decision.contact_updates or decision.tags_added:
        changed = Contact(
            ev.contact,
            fields={**contact.fields, **decision.contact_updates},
            tags=[*contact.tags, *decision.tags_added],
            updated_at=contact.updated_at,
        )
    if ev.kind == "call":
        result = "called" if ev.ok else "call_failed"
    elif ev.kind == "timer":
        result = "expired" if decision.outcome == EXPIRED else "timed_out"
    else:
        result = "started" if ev.kind == "start" or not active else "replied"
    return _Plan(
        result,
        flow=flow.name,
        state=decision.state,
        texts=decision.messages,
        outcome=decision.outcome,
        contact=changed,
        call=_call_job(ev, decision.call),
        consent=(decision.consent, "keyword", f"{ev.text} (in reply to {flow.name})")
        if decision.consent and ev.kind == "in"
        else None,
        # A flow's goodbye to a customer who just opted out is that opt-out's one confirmation.
        system=set(range(len(decision.messages))) if decision.consent == governance.OPTED_OUT else set(),
        inbox=handed,
        events=handed_events,
    )


def _render_failed(
    rt: TurnServices,
    ev: Event,
    old: dict[str, Any],
    flow: Flow | None,
    contact: Contact,
    exc: RenderError,
    now: int,
) -> _Plan:
    """A template failed for this contact: the run it failed in (a new one, at a journey's
    first node) ends ``failed``, its outcome event naming the node and a short reason; what the
    turn would have said or changed is dropped and the flow's ``fallback`` is the one message, if
    it has one. Committed like any turn: retrying would fail the same way, and the customer
    would hear nothing while the event went to the dead letters."""
    run = exc.state if exc.state is not None else old
    failing = rt.flows.for_state(run) if run.get("f") else flow
    name = str(run.get("f") or (failing.name if failing else ""))
    log.error(
        "render failed flow=%s node=%s contact=%s event=%s: %s", name, exc.node, mask(ev.contact), ev.ref, exc
    )
    failed = {**run, "n": None, "o": "failed", "ea": now, "err": exc.reason, "fn": exc.node}
    failed.pop("ws", None)
    failed.pop("rp", None)
    fallback = failing.fallback_for(contact.language) if failing is not None else None
    return _Plan("failed", flow=name, state=failed, texts=[fallback] if fallback else [], outcome="failed")


def _call_job(ev: Event, call: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the caller needs: the rendered request, and where to send the answer back."""
    return None if call is None else {**call, "shard": ev.shard}


@dataclass(frozen=True)
class Rehearsal:
    """What a turn would do, decided and committed nowhere (the console's flow simulator)."""

    #: As :attr:`TurnDone.result`: replied, started, timed_out, opted_out, help, no_reply ...
    result: str
    flow: str
    #: The session state after the turn (None: unchanged).
    state: dict[str, Any] | None
    texts: list[str]
    outcome: str | None
    #: The contact after the turn, when the flow set fields or added tags.
    contact: Contact | None
    #: The CRM request the flow would make (rendered), when it calls one.
    call: dict[str, Any] | None
    #: The consent change a keyword or a ``consent:`` node would record: (status, source, cause).
    consent: tuple[str, str, str] | None
    #: The reason, when the turn hands the contact to a person (the inbox).
    handoff: str | None


def rehearse(
    rt: TurnServices, ev: Event, state: dict[str, Any], contact: Contact, consent: Consent
) -> Rehearsal:
    """Pure: the turn :func:`run_turn` would make of ``ev`` (governance keywords, consent, then
    the flow), from a state and contact the caller holds, at ``rt.clock``'s time. Nothing is
    loaded or written: no session, no timer, no message, no event. Quiet hours and caps are the
    commit's and the sender's, and are not applied."""
    if ev.kind == "timer" and ev.timer_kind == "d":
        ev = ev.undeferred()
    reading = (
        rt.keywords.read(ev.text, in_conversation=state.get("n") is not None)
        if ev.kind == "in"
        else governance.Reading()
    )
    plan = _governed(rt, ev, state, contact, consent, reading.keyword) or _decide(rt, ev, state, contact)
    return Rehearsal(
        plan.result, plan.flow, plan.state, plan.texts, plan.outcome, plan.contact, plan.call, plan.consent,
        plan.inbox[1] if plan.inbox[:1] == ("open",) else None,
    )  # fmt: skip


def missing_fields(flow: Flow, contact: Contact) -> list[str]:
    """The fields ``flow`` requires that the contact lacks (empty values count as missing)."""
    return [f for f in flow.fields if contact.fields.get(f) in (None, "", [])]


def _hand_off(
    rt: TurnServices, flow: Flow, decision: Decision, view: dict[str, Any], now: int
) -> tuple[Flow, Decision]:
    """``start: other``: the conversation ended; the other flow starts in the same turn (the
    loader checked it exists). The finished one's outcome and results are kept under ``prev``."""
    nxt = rt.flows.get(decision.next_flow or "")
    assert nxt is not None
    try:
        then = start(nxt, view, decision.state.get("p", {}), now)
    except RenderError as exc:  # the first run still ended, handed off; the new one failed
        if exc.state is not None:
            exc.state["prev"] = {"f": flow.name, "o": decision.outcome, "r": decision.state.get("r", {})}
        raise
    then.messages = decision.messages + then.messages
    then.contact_updates = {**decision.contact_updates, **then.contact_updates}
    then.tags_added = decision.tags_added + [t for t in then.tags_added if t not in decision.tags_added]
    then.state["prev"] = {"f": flow.name, "o": decision.outcome, "r": decision.state.get("r", {})}
    return nxt, then


def _fire(
    flow: Flow | None, state: dict[str, Any], view: dict[str, Any], ev: Event, now: int
) -> Decision | None:
    """A fired timer's decision, or None when it no longer matches the session (stale)."""
    if flow is None or state.get("n") is None:
        return None
    if ev.timer_kind == "x" and ev.timer_token == str(state.get("st")):
        return expire(state, now)
    node = flow.nodes.get(state["n"])
    if (
        ev.timer_kind == "c"
        and node is not None
        and node.call is not None
        and ev.timer_token == f"{state['n']}@{state.get('ws')}"
    ):
        return call_result(flow, state, view, False, {"error": "no answer from the CRM"}, now)
    if (
        ev.timer_kind == "w"
        and node is not None
        and node.timeout_goto
        and ev.timer_token == f"{state['n']}@{state.get('ws')}"
    ):
        return timeout(flow, state, view, now)
    return None


def _contact_change(c: Contact | None, now: int) -> ContactChange | None:
    """The commit's contact CAS and its new fields and tags."""
    if c is None:
        return None
    # updated-at doubles as the contact's version: it must move even within one millisecond.
    return ContactChange(
        c.updated_at,
        orjson.dumps(c.fields).decode(),
        orjson.dumps(c.tags).decode(),
        max(now, c.updated_at + 1),
    )


async def _commit(
    rt: TurnServices,
    ev: Event,
    version: int,
    plan: _Plan,
    old: dict[str, Any],
    *,
    answered: bool,
    ack_group: str = "",
) -> tuple[str, list[str]]:
    """``answered``: the flow decided (a keyword or a silenced contact's text is no answer)."""
    now = rt.clock.now_ms()
    kind = ev.kind if answered else "keyword"
    events = outcomes.events_for(ev.contact, kind, old, plan.state, now, plan.consent, ev.accepted_ms)
    if ev.kind == "start" and plan.state is None:
        events += outcomes.start_events(ev.contact, ev.flow, plan.result, ev.params, now)
    events += plan.events
    if plan.state is not None and "_start" in plan.state.get("p", {}):
        # The journey's bookkeeping is in the started event; the held session need not carry it,
        # but a run started as marketing stays marketing to its end.
        narrowed = plan.state["p"]["_start"].get("purpose") == governance.MARKETING
        plan.state = {
            **plan.state,
            "p": {k: v for k, v in plan.state["p"].items() if k != "_start"},
            **({"pu": governance.MARKETING} if narrowed else {}),
        }
    single = plan.single
    if single is not None and single.gateway:
        route = [single.gateway]
    else:
        route = rt.router.route(
            ev.contact, flow=plan.flow or ev.flow, inbound=ev.gateway if ev.kind == "in" else "", sender=ev.to
        )
    gateway = route[0] if route else ""
    # Someone waiting for an answer goes in the reply lane; what the business starts, in bulk.
    lane = single.lane if single is not None else "reply" if _customer_led(ev) else "bulk"
    records: list[tuple[str, str]] = []
    if ev.kind == "in":
        rec = {
            "id": f"in-{ev.msg_base}", "dir": "in", "text": ev.text, "from": ev.contact, "to": ev.to,
            "gateway": ev.gateway, "provider_id": ev.provider_id, "status": "received",
            "at": ev.accepted_ms, "flow": plan.flow or None, "history": [["received", ev.accepted_ms]],
        }  # fmt: skip
        if plan.review:
            rec["opt_out_review"] = True
            events += outcomes.review_events(ev.contact, old, ev.text, f"in-{ev.msg_base}", now)
        records.append((f"in-{ev.msg_base}", orjson.dumps(rec).decode()))
    outbound: list[Outbound] = []
    ids: list[str] = []
    # A reply to the customer's own text, in a conversational flow, does not count towards caps.
    flow = rt.flows.get(plan.flow) if plan.flow else None
    exempt = rt.config.governance.exempt_replies and (
        (ev.kind == "in" and (flow is None or flow.conversational)) or plan.result == "inbox_replied"
    )
    purpose = ev.purpose or _run_purpose(rt, plan.state if plan.state is not None else old)
    if single is not None:
        outbound, ids = _single(ev, plan, single, gateway, records, events, now)
    for k, text in enumerate([] if single is not None else plan.texts):
        mid = f"out-{ev.msg_base}-{k}"
        if ev.kind == "inbox" and k == 0 and "m" in ev.params:
            mid = str(ev.params["m"])
        kind = governance.gate_kind(purpose, system=k in plan.system, counted=not exempt)
        status, error = ("queued", None) if gateway else ("failed", "no gateway can send this reply")
        enc = encoding_of(text)
        rec = {
            "id": mid, "dir": "out", "text": text, "to": ev.contact, "gateway": gateway,
            "status": status, "at": now, "flow": plan.flow, "cause": ev.ref,
            "encoding": enc.name, "segments": enc.segments, "history": [[status, now]],
        }  # fmt: skip
        if error:
            rec["error"] = error
        if plan.result == "inbox_replied":
            rec["operator"] = ev.params.get("by")
        if not answered:  # a STOP/START confirmation or a HELP answer: not the flow's message
            rec["governance"] = True
        records.append((mid, orjson.dumps(rec).decode()))
        if gateway:
            outbound.append(Outbound(mid, text, kind))
            ids.append(mid)
    commit = CommitArgs(
        version=version,
        event=ev.ref,
        contact=ev.contact,
        shard=ev.shard,
        outbound_stream=keys.outbound_stream(ev.shard, gateway or "-", lane),
        state=sessions.pack_state(plan.state) if plan.state is not None else "",
        ttl_s=plan.ttl,
        log_size=rt.config.engine.message_log_size,
        log_ttl_s=int(rt.config.engine.message_log_ttl),
        records=records,
        outbound=outbound,
        timers_remove=plan.timers_remove,
        timers_add=plan.timers_add,
        contact_change=_contact_change(plan.contact, now),
        call=orjson.dumps(plan.call).decode() if plan.call else "",
        consent="|".join(plan.consent) if plan.consent else "",
        # Marketing is always held to caps: the global ones where a service flow said none.
        caps=rt.caps_for(None if purpose == governance.MARKETING and flow and flow.caps == [] else flow),
        now_ms=now,
        failover=route[1:],
        events=events,
        events_max=rt.config.engine.outcome_events_max,
        ack_group=ack_group,
        inbox=plan.inbox,
        handover=keys.handover(ev.shard, unit) if (unit := singles.unit_of(ev)) else "",
        options=_send_options(single, flow, plan, now),
    )

    async def add(pipe: Pipeline) -> None:
        await rt.store.run("commit", keys=commit.to_keys(), args=commit.to_argv(), client=pipe)

    (res,) = await rt.store.coalescer.run(add)
    why = dict(b.decode().split(" ", 1) for b in res[2:])
    blocked = set(why)
    if res[0] == b"ok":
        rt.metrics.gate("sent", len(ids) - len(blocked))
        for code in why.values():
            rt.metrics.gate(code)
    return res[0].decode(), [i for i in ids if i not in blocked]


def _send_options(single: singles.Single | None, flow: Flow | None, plan: _Plan, now: int) -> str:
    """The send options of the commit's messages: a single message's own, else its flow's
    ``sms:`` section (not on governance confirmations and HELP answers)."""
    if single is not None:
        return single.options
    if flow is None or flow.sms is None or plan.system:
        return ""
    return flow.sms.options(now).encode()


def _single(
    ev: Event,
    plan: _Plan,
    single: singles.Single,
    gateway: str,
    records: list[tuple[str, str]],
    events: list[str],
    now: int,
) -> tuple[list[Outbound], list[str]]:
    """A single message's record (queued, deferred, or what stopped it) and its one outbound,
    which the gate in the commit counts and may block like any message the business starts."""
    text = plan.texts[0] if plan.texts else ""
    if plan.result == "deferred":
        until = plan.timers_add[-1][1]
        rec = singles.record(ev, single, text, "deferred", now, gateway)
        rec["deferred_until"] = until
        records.append((single.id, orjson.dumps(rec).decode()))
        return [], []
    if plan.texts and not gateway:
        single = replace(single, status="failed", error="no gateway can send this message")
    if single.status != "queued":
        rec = singles.record(ev, single, text, single.status, now, gateway)
        records.append((single.id, orjson.dumps(rec).decode()))
        events.append(singles.outcome_event(ev, single, now))
        return [], []
    rec = singles.record(ev, single, text, "queued", now, gateway)
    records.append((single.id, orjson.dumps(rec).decode()))
    kind = governance.gate_kind(ev.purpose or governance.SERVICE)  # marketing needs the opt-in
    return [Outbound(single.id, text, kind)], [single.id]
