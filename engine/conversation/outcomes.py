"""Flow outcomes: what each turn did to a conversation, as events on its contact's shard's
outcome stream (``p:fx:T``; one stream per shard, each in order, no order across them).

A turn's commit appends, in the same script and so exactly once per applied event:

    started   a run of a flow began           run, flow, params
    replied   the customer answered a wait    run, flow, node, wait_ms (since the question)
    result    a result was saved or changed   run, flow, name, value, category
    ended     the run finished                run, flow, outcome, node (where it stopped),
                                              reason (outcome failed: why a template failed)
    consent   opted_out / opted_in            flow of the run in progress, if any
    opt_out_review  a text with an opt-out keyword that the opt-out rule could not read
              (engine/governance/optout.py), for a person: text, m (its message id), flow and run if in one
    inbox     a step of a contact handed off to a person (engine/conversation/inbox.py): step
              (handed_off, text, claimed, replied, closed, returned), by, why, m, next

and the message status script appends ``message`` (a flow's message reached a final status:
delivered, failed, expired, rejected; or blocked by the gate). A run is ``<contact>/<started
ms>``: one contact's runs never share a start time. Reports, result exports and the CRM's event
webhooks all read these streams (every shard's); nothing else is needed to answer "how did the journey do".

Events are derived here, purely, from the session before and after the turn (no I/O).
"""

from __future__ import annotations

from typing import Any

import orjson

#: Outcomes Parley gives a run; any other outcome is the flow's own ``end:`` (it completed).
ENGINE_OUTCOMES = frozenset(
    {"expired", "unanswered", "failed", "handed_off", "flow_changed", "interrupted", "opted_out", "handoff"}
)


def run_id(contact: str, state: dict[str, Any]) -> str:
    return f"{contact}/{state['st']}"


def start_events(contact: str, flow: str, result: str, params: dict[str, Any], at: int) -> list[str]:
    """A journey start that did not start a run: ``skipped`` (why) or ``deferred`` (quiet hours)."""
    meta = _journey(params)
    if result == "deferred":
        e: dict[str, Any] = {"t": "deferred", "c": contact, "f": flow, **meta}
    elif result.startswith("skipped_"):
        e = {"t": "skipped", "c": contact, "f": flow, "reason": result.removeprefix("skipped_"), **meta}
    else:
        return []
    return [orjson.dumps({**e, "at": at}).decode()]


def events_for(
    contact: str, kind: str, old: dict[str, Any], new: dict[str, Any] | None, at: int,
    consent: tuple[str, str, str] | None = None, accepted_ms: int = 0,
) -> list[str]:  # fmt: skip
    """The outcome events of one turn, as JSON strings. ``new`` None: the state is unchanged.
    ``kind`` is the event's kind (``in`` for a customer's text the flow answered; a keyword is
    not an answer); ``accepted_ms`` when the event came in."""
    out: list[dict[str, Any]] = []
    after = old if new is None else new
    same_run = bool(old.get("st")) and old.get("st") == after.get("st") and old.get("f") == after.get("f")
    old_open = bool(old.get("f")) and old.get("n") is not None
    if old_open and not same_run:
        prev = after.get("prev") or {}
        if prev.get("f") == old.get("f"):  # it ended and handed off to another flow in this turn
            out += _results(contact, old, old.get("r") or {}, prev.get("r") or {})
            out.append(
                _ev("ended", contact, old, outcome=prev.get("o"), node=old.get("n"), next=after.get("f"))
            )
        else:  # a start with interrupt: true cut it short
            out.append(_ev("ended", contact, old, outcome="interrupted", node=old.get("n")))
    if after.get("st") and after.get("f") and not same_run:
        params = {k: v for k, v in (after.get("p") or {}).items() if k != "_start"}
        out.append(_ev("started", contact, after, **_journey(after.get("p") or {}), params=params))
    if kind == "in" and old_open and same_run and old.get("ws"):
        out.append(
            _ev("replied", contact, old, node=old.get("n"), wait_ms=max(0, accepted_ms - int(old["ws"])))
        )
    if after.get("f"):
        out += _results(contact, after, (old.get("r") or {}) if same_run else {}, after.get("r") or {})
    if after.get("f") and after.get("n") is None and (not same_run or old.get("n") is not None):
        node = after.get("fn") or (old.get("n") if same_run else None)  # fn: where a render failed
        why = {"reason": after["err"]} if after.get("o") == "failed" and after.get("err") else {}
        out.append(_ev("ended", contact, after, outcome=after.get("o"), node=node, **why))
    if consent is not None:
        who = after if after.get("f") and after.get("n") is not None else old if old_open else {}
        out.append({"t": "consent", "c": contact, "status": consent[0], "source": consent[1],
                    **({"f": who["f"], "run": run_id(contact, who)} if who else {})})  # fmt: skip
    return [orjson.dumps({**e, "at": at}).decode() for e in out]


def review_events(contact: str, state: dict[str, Any], text: str, message_id: str, at: int) -> list[str]:
    """``opt_out_review``: the customer's text (in the run ``state`` holds, if one is open) has an
    opt-out keyword in something that is neither a request to stop nor a near miss."""
    e: dict[str, Any] = {"t": "opt_out_review", "c": contact, "m": message_id, "text": text}
    if state.get("f") and state.get("n") is not None and state.get("st"):
        e.update(f=state["f"], run=run_id(contact, state))
    return [orjson.dumps({**e, "at": at}).decode()]


def _journey(params: dict[str, Any]) -> dict[str, Any]:
    """A journey start's id, arm and experiment (``params._start``, engine/crm/journeys.py), or
    a campaign's fire's ``campaign`` and ``campaign_event`` (engine/conversation/turn.py)."""
    return {("start" if k == "id" else k): v for k, v in (params.get("_start") or {}).items()}


def _results(
    contact: str, state: dict[str, Any], before: dict[str, Any], after: dict[str, Any]
) -> list[dict[str, Any]]:
    return [
        _ev("result", contact, state, name=name, value=res.get("v"), category=res.get("c"))
        for name, res in after.items()
        if before.get(name) != res
    ]


def _ev(t: str, contact: str, state: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"t": t, "c": contact, "f": state["f"], "run": run_id(contact, state), **fields}
