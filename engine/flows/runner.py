"""Deciding a turn: pure functions from (flow, session state, contact, reply) to a Decision.

No I/O, no parsing: the flow was compiled at load, the reply is normalised once. The caller
loads the state before and commits the Decision after (see ``engine/conversation/turn.py``).

Session state is a small dict with short keys, because it is what Redis holds per conversation:

    f   flow name            fv  flow version       fh  flow digest (the exact version it runs on)
    n   node waiting for a reply (None: ended)
    st  started (ms)         ws  waiting since (ms) rp  reprompts used at this node
    r   results {name: {v: value, c: category, t: text, at: ms}}
    p   start parameters     o   outcome once ended  ea  ended at (ms)
    err why a run failed (a template could not render)   fn  the node it failed at
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.core.errors import RenderError
from engine.core.sms import encoding_of
from engine.flows.conditions import resolve
from engine.flows.model import Flow, Node
from engine.flows.reply_tests import Match
from engine.flows.templates import Template
from engine.flows.text import Reply

#: A turn that passes through more nodes than this without waiting is a flow bug.
MAX_STEPS = 64
UNANSWERED = "unanswered"
EXPIRED = "expired"
HANDED_OFF = "handed_off"
#: The outcome of a run that ended at a ``handoff:`` node (the contact is now in the inbox).
TO_INBOX = "handoff"


@dataclass
class Decision:
    """What a turn decided: messages to send (in order) and the new session state."""

    messages: list[str] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    #: Set when the conversation ended in this turn.
    outcome: str | None = None
    #: Contact fields set and tags added in this turn.
    contact_updates: dict[str, Any] = field(default_factory=dict)
    tags_added: list[str] = field(default_factory=list)
    #: The flow to start next, when the conversation ended with ``start:``.
    next_flow: str | None = None
    #: A CRM webhook to call (rendered), when the conversation now waits on one.
    call: dict[str, Any] | None = None
    #: Consent the customer gave or withdrew in this turn (a ``consent:`` node), or None.
    consent: str | None = None
    #: The reason, when the conversation ended at a ``handoff:`` node (to the inbox).
    handoff: str | None = None

    @property
    def active(self) -> bool:
        return self.state.get("n") is not None


class _Saved:
    """What a saved result adds to its value in templates: ``.category`` and ``.text`` (and
    ``.value``, the plain value, as flows written before results were their values say)."""

    category: Any = None
    text: Any = None
    value: Any = None


class _SavedStr(str, _Saved):
    pass


class _SavedInt(int, _Saved):
    pass


class _SavedFloat(float, _Saved):
    pass


class _SavedDict(dict[str, Any], _Saved):
    pass


class _SavedList(list[Any], _Saved):
    pass


class ResultView(_Saved):
    """A saved true/false or empty result (``bool`` cannot be subclassed): prints, tests and
    compares as its value."""

    def __str__(self) -> str:
        return "" if self.value is None else str(self.value)

    def __bool__(self) -> bool:
        return bool(self.value)

    def __eq__(self, other: object) -> bool:
        return bool(self.value == (other.value if isinstance(other, ResultView) else other))

    def __hash__(self) -> int:
        return hash(self.value)


_SAVED: dict[type, type] = {
    str: _SavedStr,
    int: _SavedInt,
    float: _SavedFloat,
    dict: _SavedDict,
    list: _SavedList,
}


def saved_result(r: dict[str, Any]) -> Any:
    """A saved result as templates see it: its value itself (a text, number, list or CRM answer,
    so filters, comparisons and arithmetic work on it: ``results.day | datetime``,
    ``results.score >= 9``, ``results.crm.balance``), with ``.category`` and ``.text`` added."""
    value = r.get("v")
    kind = _SAVED.get(type(value))
    view: _Saved = kind(value) if kind is not None else ResultView()
    view.value = value
    view.category = r.get("c")
    view.text = r.get("t")
    return view


def template_context(contact: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """The names a template can use: ``contact.*``, ``results.*``, ``params.*``."""
    return {
        "contact": contact,
        "results": {k: saved_result(v) for k, v in state.get("r", {}).items()},
        "params": state.get("p", {}),
    }


def _pick(variants: dict[str, Template], language: str | None, flow: Flow) -> Template:
    for lang in (language, flow.language, ""):
        if lang is not None and lang in variants:
            return variants[lang]
    return next(iter(variants.values()))


def condition_data(contact: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """What ``field:`` conditions see: results by value, plus session facts."""
    return {
        "contact": contact,
        "results": {k: v.get("v") for k, v in state.get("r", {}).items()},
        "params": state.get("p", {}),
        "session": {"flow": state.get("f"), "started_at": state.get("st")},
    }


def _walk(flow: Flow, node_name: str, contact: dict[str, Any], d: Decision, now_ms: int) -> None:
    """Say and move along from ``node_name`` until a node waits or ends the flow."""
    state = d.state
    language = contact.get("language")
    # Results do not change during a walk, and ``set`` updates ``contact`` in place, so one
    # context serves every message of the turn.
    ctx = template_context(contact, state)
    for _ in range(MAX_STEPS):
        node: Node = flow.nodes[node_name]
        try:
            if node.sets:
                for key, tpl in node.sets.items():
                    value = tpl.render_value(ctx)
                    d.contact_updates[key] = contact[key] = value  # later templates see the new value
            for tag in node.tags:
                if tag not in contact.get("tags", []):
                    contact["tags"] = [*contact.get("tags", []), tag]
                    d.tags_added.append(tag)
            if node.consent is not None:
                d.consent = node.consent
            if node.say:
                d.messages.append(_message(_pick(node.say, language, flow), ctx, flow))
            if node.start_flow is not None:
                _end(d, HANDED_OFF, now_ms)
                d.next_flow = node.start_flow
                return
            if node.call is not None:
                c = node.call
                d.call = {
                    "url": c.url.render(ctx),
                    "method": c.method,
                    "headers": {k: str(t.render_value(ctx)) for k, t in c.headers.items()},
                    "body": {k: t.render_value(ctx) for k, t in c.body.items()}
                    if c.body is not None
                    else None,
                    "timeout": c.timeout,
                    "token": f"{node.name}@{now_ms}",
                    **({"cache": c.cache} if c.cache else {}),
                }
                state["n"], state["ws"], state["rp"] = node.name, now_ms, 0
                return
            if not node.wait and node.cases:
                data = condition_data(contact, state)
                hit = next((c for c in node.cases if c.condition is not None and c.condition(data)), None)
                target = hit.goto if hit else node.default
                assert target is not None  # the loader requires a default on routing nodes
                node_name = target
                continue
            if node.wait:
                state["n"] = node.name
                state["ws"] = now_ms
                state["rp"] = 0
                return
            if node.end is not None:
                _end(d, node.end, now_ms)
                return
            if node.handoff is not None:
                _end(d, TO_INBOX, now_ms)
                d.handoff = node.handoff
                return
            assert node.goto is not None  # guaranteed by the loader
            node_name = node.goto
        except RenderError as exc:
            raise _blamed(exc, node.name, d) from None
    raise RuntimeError(f"flow {flow.name}: more than {MAX_STEPS} steps without waiting")


def _blamed(exc: RenderError, node: str, d: Decision) -> RenderError:
    """The failure, with the node it happened at and the run it happened in (this decision's:
    a new run's when the flow was starting, not the contact's previous one)."""
    exc.node = exc.node or node
    exc.state = exc.state if exc.state is not None else d.state
    return exc


def _message(tpl: Template, ctx: dict[str, Any], flow: Flow) -> str:
    """A rendered message, refused if it is longer than the flow may send."""
    text = tpl.render(ctx)
    if len(text) * 2 > flow.max_segments * 67:  # shorter ones fit in any alphabet: not counted
        segments = encoding_of(text).segments
        if segments > flow.max_segments:
            raise RenderError(
                f"the message is {segments} SMS segments long, over the limit of {flow.max_segments}",
                tpl.source,
            )
    return text


def _end(d: Decision, outcome: str, now_ms: int) -> None:
    d.state["n"] = None
    d.state["o"] = outcome
    d.state["ea"] = now_ms
    d.state.pop("ws", None)
    d.state.pop("rp", None)
    d.outcome = outcome


def start(flow: Flow, contact: dict[str, Any], params: dict[str, Any], now_ms: int) -> Decision:
    """Start ``flow`` for a contact: a fresh session, walked from the start node."""
    d = Decision(
        state={"f": flow.name, "fv": flow.version, "fh": flow.digest, "st": now_ms, "r": {}, "p": params}
    )
    _walk(flow, flow.start, contact, d, now_ms)
    return d


def resume(flow: Flow, state: dict[str, Any], contact: dict[str, Any], text: str, now_ms: int) -> Decision:
    """Apply the customer's reply ``text`` to a session waiting at a node."""
    d = Decision(state={**state, "r": dict(state.get("r", {}))})
    node = flow.nodes[state["n"]]
    if node.call is not None:  # waiting on the CRM, not on the customer: the text is only logged
        return d
    reply = Reply(text, now_ms=now_ms, timezone=contact.get("timezone"), contact_number=contact.get("number"))
    data = condition_data(contact, state) if any(c.condition for c in node.cases) else {}
    for case in node.cases:
        if case.condition is not None:
            m = Match(text.strip()) if case.condition(data) else None
        else:
            assert case.test is not None
            m = case.test(reply)
        if m is not None:
            _save(node, d, m.value, case.category, text, now_ms)
            _walk(flow, case.goto, contact, d, now_ms)
            return d
    if node.default:
        _save(node, d, text.strip(), "other", text, now_ms)
        _walk(flow, node.default, contact, d, now_ms)
        return d
    rp = node.reprompt
    assert rp is not None  # the loader refuses a waiting node with neither
    used = int(state.get("rp", 0))
    if used < rp.max:
        try:
            d.messages.append(
                _message(
                    _pick(rp.say, contact.get("language"), flow), template_context(contact, d.state), flow
                )
            )
        except RenderError as exc:
            raise _blamed(exc, node.name, d) from None
        d.state["rp"] = used + 1
    elif rp.after:
        _walk(flow, rp.after, contact, d, now_ms)
    else:
        _end(d, UNANSWERED, now_ms)
    return d


def timeout(flow: Flow, state: dict[str, Any], contact: dict[str, Any], now_ms: int) -> Decision:
    """The customer did not answer the waiting node in time: go to its ``timeout`` node."""
    d = Decision(state={**state, "r": dict(state.get("r", {}))})
    target = flow.nodes[state["n"]].timeout_goto
    assert target is not None  # only scheduled for nodes with a timeout
    _walk(flow, target, contact, d, now_ms)
    return d


def call_result(
    flow: Flow, state: dict[str, Any], contact: dict[str, Any], ok: bool, data: Any, now_ms: int
) -> Decision:
    """The CRM answered (``ok``) or failed / timed out: save the answer and take that route."""
    d = Decision(state={**state, "r": dict(state.get("r", {}))})
    call = flow.nodes[state["n"]].call
    assert call is not None
    if call.save:
        d.state["r"][call.save] = {"v": data, "c": "success" if ok else "failure", "t": "", "at": now_ms}
    if ok and call.fields:  # fresh data from the CRM, before the next nodes render with it
        for name, path in call.fields.items():
            value = resolve(data, tuple(path.split(".")))
            if _field_value(value):
                d.contact_updates[name] = value
        contact = {**contact, **d.contact_updates}
    _walk(flow, call.success if ok else call.failure, contact, d, now_ms)
    return d


def _field_value(v: Any) -> bool:
    """A CRM value that fits a contact field: text (≤ 2,000 characters), a number, true/false, or
    a list of those (objects and null are left out, as a CRM PUT would be refused for them)."""
    if isinstance(v, list):
        return len(v) <= 100 and all(_field_value(x) for x in v)
    return isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) <= 2000)


#: A call's safety timer fires this long after its timeout, if no answer came at all.
CALL_GRACE_S = 10.0


def expire(state: dict[str, Any], now_ms: int) -> Decision:
    """The conversation waited longer than the flow's ``expire_after``: it ends, silently."""
    d = Decision(state=dict(state))
    _end(d, EXPIRED, now_ms)
    return d


def timers_of(flow: Flow | None, state: dict[str, Any]) -> dict[tuple[str, str], int]:
    """The timers a state needs: {(kind, token): due ms}. ``w``: the waiting node's timeout,
    token ``node@waiting-since``; ``x``: the session's expiry, token ``started-at``."""
    if flow is None or state.get("n") is None:
        return {}
    out = {("x", str(state["st"])): int(state["st"] + flow.expire_after * 1000)}
    node = flow.nodes.get(state["n"])
    if node is not None and node.timeout is not None:
        out[("w", f"{node.name}@{state['ws']}")] = int(state["ws"] + node.timeout * 1000)
    if node is not None and node.call is not None:
        out[("c", f"{node.name}@{state['ws']}")] = int(
            state["ws"] + (node.call.timeout + CALL_GRACE_S) * 1000
        )
    return out


def _save(node: Node, d: Decision, value: object, category: str, text: str, now_ms: int) -> None:
    if node.save:
        d.state["r"][node.save] = {"v": value, "c": category, "t": text.strip(), "at": now_ms}
