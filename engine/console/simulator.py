"""The Flows page's simulator: chat with a flow in the browser, as the engine would answer.

Each turn is decided by the engine's own turn logic (:func:`engine.conversation.turn.rehearse`:
governance keywords, consent, then the flow runner, exactly as ``run_turn`` decides) on a
session and contact held **in memory**, and committed nowhere. We chose that over a sandbox
number run through the real worker (as ``parley chat`` does in its own process) because in a
running engine that path writes where production reads: the commit enqueues the reply on the
real connector's lane, appends outcome events the flow's report counts, records timers the
worker fires and writes a contact record. In memory, nothing can reach a gateway, a real
contact, the report or the CRM: the services handed to the runner refuse the store
(:class:`Sandbox`), and the simulated contact's number is in Ofcom's range kept for drama
(:data:`NUMBER`), which reaches nobody.

What is simulated differently: a ``call:`` node's CRM request is shown, not made (fire its
timer for the "no answer" route, or give an answer); time is the simulation's own clock, which
a fired timer moves to the timer's due time (so a 4-hour reminder's dates read 4 hours on);
quiet hours, caps and delivery are the sender's and are not applied.

The simulation (contact, session, clock, transcript) is kept as JSON in Redis under the console
session that made it (``keys.console_simulation``), for an hour after its last use.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from engine.conversation.events import Event
from engine.conversation.ports import TurnServices
from engine.conversation.turn import Rehearsal, rehearse
from engine.core import keys
from engine.core.clock import Clock, FakeClock
from engine.core.config import Config
from engine.core.contacts import Contact
from engine.core.errors import ParleyError
from engine.core.ports import Routes
from engine.core.store import Store
from engine.flows import Flow, FlowRegistry, timers_of
from engine.flows.campaigns import CampaignBook
from engine.governance import consent as governance
from engine.governance.quiet import QuietHours

#: The simulated contact's number: Ofcom's range for drama (07700 900000-900999) reaches nobody.
NUMBER = "+447700900000"
#: Transcript lines kept per simulation (the oldest go first).
MAX_LINES = 300
#: A simulation is forgotten this long after its last turn.
TTL_S = 3600
#: What each timer kind is, as the transcript says it.
TIMER_KINDS = {
    "w": "no reply in time",
    "x": "the conversation expired",
    "c": "the CRM did not answer",
}


class SimulatorError(ParleyError):
    """A simulator action that cannot be done now (no timer pending, no call waiting)."""


class Sandbox:
    """The services a rehearsed turn is handed: the engine's flows, keywords and configuration,
    the simulation's own clock, and no store (a rehearsal touching Redis would be a bug, and
    fails loudly instead of writing)."""

    def __init__(self, rt: TurnServices, clock: Clock) -> None:
        self._rt, self._clock = rt, clock

    @property
    def config(self) -> Config:
        return self._rt.config

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def metrics(self) -> Any:
        raise RuntimeError("the simulator records no metrics")

    @property
    def store(self) -> Store:
        raise RuntimeError("the simulator touches no store")

    @property
    def flows(self) -> FlowRegistry:
        return self._rt.flows

    @property
    def keywords(self) -> governance.Keywords:
        return self._rt.keywords

    @property
    def quiet(self) -> QuietHours:
        return self._rt.quiet

    @property
    def router(self) -> Routes:
        return self._rt.router

    @property
    def campaigns(self) -> CampaignBook:
        return self._rt.campaigns

    def caps_for(self, flow: Flow | None) -> str:
        return self._rt.caps_for(flow)


@dataclass
class Line:
    """One transcript line: ``in`` (the customer), ``out`` (Parley), ``set``, ``tag``,
    ``timer``, ``crm``, ``consent``, ``handoff``, ``end`` or ``note``."""

    kind: str
    text: str
    at: int = 0


@dataclass
class Simulation:
    flow: str
    now_ms: int
    fields: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    language: str | None = None
    timezone: str | None = None
    consent: str = governance.UNKNOWN
    marketing: str = governance.UNKNOWN
    state: dict[str, Any] = field(default_factory=dict)
    #: Set when the flow handed the contact to a person (its texts then go to the inbox).
    handoff: str | None = None
    lines: list[Line] = field(default_factory=list)
    seq: int = 0

    # -- what the page shows ------------------------------------------------------------------

    @property
    def waiting_at(self) -> str | None:
        return self.state.get("n") if self.handoff is None else None

    def pending_timer(self, flows: FlowRegistry) -> tuple[str, str, int] | None:
        """The earliest timer the session has: (kind, token, due ms), or None."""
        if self.handoff is not None:
            return None
        timers = timers_of(flows.for_state(self.state), self.state)
        if not timers:
            return None
        (kind, token), due = min(timers.items(), key=lambda kv: kv[1])
        return kind, token, due

    def contact(self) -> Contact:
        return Contact(NUMBER, dict(self.fields), self.language, self.timezone, tags=list(self.tags))

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Simulation:
        d = orjson.loads(raw)
        d["lines"] = [Line(**x) for x in d.get("lines", [])]
        return cls(**d)

    # -- turns --------------------------------------------------------------------------------

    def _event(self, kind: str, **kw: Any) -> Event:
        self.seq += 1
        return Event(0, f"{self.now_ms}-{self.seq}", kind, NUMBER, self.now_ms, gateway="simulator", **kw)

    def _note(self, kind: str, text: str) -> None:
        self.lines.append(Line(kind, text, self.now_ms))
        del self.lines[:-MAX_LINES]

    def _turn(self, rt: TurnServices, ev: Event) -> Rehearsal:
        clock = FakeClock(self.now_ms)
        r = rehearse(
            Sandbox(rt, clock),
            ev,
            self.state,
            self.contact(),
            governance.Consent(self.consent, marketing=self.marketing),
        )
        self._apply(r)
        return r

    def _apply(self, r: Rehearsal) -> None:
        if r.contact is not None:
            for name, value in r.contact.fields.items():
                if name not in self.fields or self.fields[name] != value:
                    self._note("set", f"{name} = {value!r}")
            for tag in r.contact.tags:
                if tag not in self.tags:
                    self._note("tag", tag)
            self.fields, self.tags = dict(r.contact.fields), list(r.contact.tags)
        if r.consent is not None:
            status, source, _ = r.consent
            if status.startswith(governance.MARKETING_PREFIX):
                self.marketing = status.removeprefix(governance.MARKETING_PREFIX)
            else:
                self.consent = status
                if status == governance.OPTED_OUT:
                    self.marketing = status
            self._note("consent", f"consent {status} ({source})")
        for text in r.texts:
            self._note("out", text)
        if r.call is not None:
            self._note(
                "crm",
                f"CRM {r.call.get('method', 'GET')} {r.call.get('url', '')}: not called by the simulator "
                "(answer it below, or fire the timer for its failure route)",
            )
        if r.state is not None:
            self.state = r.state
        if r.handoff is not None:
            self.handoff = r.handoff
            self._note("handoff", f"handed to a person in the inbox ({r.handoff}); texts now go there")
        if r.outcome is not None:
            self._note("end", f"conversation ended: {r.outcome}")
        elif not r.texts and r.result not in ("replied", "started", "called", "timed_out"):
            self._note("note", _QUIET.get(r.result, f"no answer ({r.result})"))

    def begin(self, rt: TurnServices) -> Rehearsal:
        """Start the flow for the simulated contact (as a journey start would, interrupting)."""
        self._note("note", f"started flow {self.flow}")
        return self._turn(rt, self._event("start", flow=self.flow, interrupt=True))

    def say(self, rt: TurnServices, text: str) -> Rehearsal | None:
        """The customer texts ``text``."""
        self._note("in", text)
        if self.handoff is not None:
            self._note("note", "kept in the inbox for a person (the flow no longer answers)")
            return None
        return self._turn(rt, self._event("in", text=text, provider_id=secrets.token_hex(8)))

    def fire(self, rt: TurnServices) -> Rehearsal:
        """The pending timer falls due now: the clock moves to it and the worker's turn runs."""
        pending = self.pending_timer(rt.flows)
        if pending is None:
            raise SimulatorError("no timer is pending: the conversation is not waiting")
        kind, token, due = pending
        self.now_ms = max(self.now_ms, due)
        node = token.partition("@")[0] if kind in ("w", "c") else ""
        self._note("timer", f"timer fired: {TIMER_KINDS.get(kind, kind)}" + (f" at {node}" if node else ""))
        return self._turn(rt, self._event("timer", timer_kind=kind, timer_token=token))

    def answer_call(self, rt: TurnServices, ok: bool, answer: Any) -> Rehearsal:
        """The CRM's answer to the call the session waits on (``ok``: it answered)."""
        node = self.waiting_at
        flow = rt.flows.for_state(self.state)
        if node is None or flow is None or node not in flow.nodes or flow.nodes[node].call is None:
            raise SimulatorError("the conversation is not waiting for a CRM call")
        self._note("crm", f"CRM answered ({'ok' if ok else 'failed'}): {orjson.dumps(answer).decode()}")
        token = f"{node}@{self.state.get('ws')}"
        return self._turn(
            rt, self._event("call", text=orjson.dumps(answer).decode(), ok=ok, timer_token=token)
        )


#: What the transcript says for a turn that said nothing and moved nothing.
_QUIET = {
    "no_reply": "no answer: the text matched no conversation and no trigger",
    "skipped_missing_fields": "not started: the contact lacks a field the flow requires",
    "skipped_opted_out": "not started: the contact opted out",
    "skipped_suppressed": "not started: the number is suppressed",
    "skipped_no_marketing_consent": "not started: a marketing flow needs the contact's marketing opt-in",
    "silenced": "no answer: the contact opted out (only START opts back in)",
    "stale_timer": "the timer no longer matched the conversation",
    "stale_call": "the answer no longer matched the conversation",
    "failed": "the flow failed (a template could not render)",
}


def new(
    flow: Flow, now_ms: int, fields: dict[str, Any], language: str | None = None,
    timezone: str | None = None, marketing_opt_in: bool = True,
) -> Simulation:  # fmt: skip
    """A fresh simulation of ``flow`` for a contact with these fields (not yet started)."""
    return Simulation(
        flow=flow.name, now_ms=now_ms, fields=dict(fields), language=language or None,
        timezone=timezone or None,
        consent=governance.OPTED_IN if marketing_opt_in else governance.UNKNOWN,
        marketing=governance.OPTED_IN if marketing_opt_in else governance.UNKNOWN,
    )  # fmt: skip


async def load(store: Store, owner: str, flow: str) -> Simulation | None:
    raw = await store.redis.get(keys.console_simulation(owner, flow))
    return Simulation.from_json(raw) if raw else None


async def save(store: Store, owner: str, sim: Simulation) -> None:
    await store.redis.set(keys.console_simulation(owner, sim.flow), sim.to_json(), ex=TTL_S)


async def forget(store: Store, owner: str, flow: str) -> None:
    await store.redis.delete(keys.console_simulation(owner, flow))
