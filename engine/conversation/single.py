"""Single messages sent outside a flow (``POST /v1/messages``): what the turn of a ``send``
event does, and what every cancellable event's turn checks first.

A single message is an event on its contact's shard stream (``kind=send``, its message in
``params``), so it is ordered with the contact's texts and passes the same gate in the same
commit as every send (consent, suppression, caps; quiet hours defer it as a ``d`` timer). It
starts no conversation and leaves the session as it is.

Cancellable units: a single message (its id), and a journey start's delivery to one contact
(``keys.start_unit``: every message that start's turn sends). Each has a hand-over key
(``keys.handover``) that a cancel and the sender race on atomically (cancel.lua and the
sender's claim.lua); the turn reads it with its load (same round trip) and sends nothing for a
unit already cancelled or expired. A unit cancelled between that load and the commit is
caught by the sender's claim: its messages are recorded ``cancelled``, never sent.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

import orjson
from redis.asyncio.client import Pipeline

from engine.conversation.events import Event
from engine.core import keys
from engine.core.errors import RenderError
from engine.core.sendopts import SendOptions
from engine.flows.templates import Template, make_environment

#: What a ``send`` event's purpose is when the caller gave none.
DEFAULT_PURPOSE = "service"
_ENV = make_environment()


@functools.lru_cache(maxsize=512)
def template(source: str) -> Template:
    """The compiled template (raises ``TemplateSyntaxError``); compiled once per distinct source."""
    return Template(_ENV, source)


def journey_start_id(ev: Event) -> str:
    """The journey start (``st-…``) a start event belongs to, or ""."""
    meta = ev.params.get("_start") if ev.kind == "start" else None
    return str(meta.get("id", "")) if isinstance(meta, dict) else ""


def unit_of(ev: Event) -> str:
    """The cancellable unit of ``ev`` ("" when it has none: texts, timers, CRM answers)."""
    if ev.kind == "send":
        return str(ev.params.get("id", ""))
    sid = journey_start_id(ev)
    return keys.start_unit(sid, ev.contact) if sid else ""


def load_extra(ev: Event, pipe: Pipeline) -> int:
    """Queue what the turn must also read for a cancellable event (its hand-over key, and for a
    journey start whether the whole start was cancelled); returns how many replies that adds."""
    unit = unit_of(ev)
    if not unit:
        return 0
    pipe.get(keys.handover(ev.shard, unit))
    sid = journey_start_id(ev)
    if sid:
        pipe.hexists(keys.cancelled_starts(ev.shard), sid)
        return 2
    return 1


def verdict(ev: Event, extra: list[Any], now_ms: int) -> str | None:
    """``cancelled`` or ``expired`` when the unit must not be sent, else None."""
    if not extra:
        return None
    held = extra[0].decode() if isinstance(extra[0], bytes) else extra[0]
    if held == "x" or (len(extra) > 1 and extra[1]):
        return "cancelled"
    if held == "e":
        return "expired"
    exp = ev.params.get("exp") if ev.kind == "send" else None
    if isinstance(exp, int) and exp <= now_ms:
        return "expired"
    return None


@dataclass(frozen=True)
class Single:
    """The single message a ``send`` event carries, and what its turn made of it."""

    id: str
    gateway: str
    lane: str
    purpose: str
    #: queued (to send) | cancelled | expired | failed (its template failed)
    status: str = "queued"
    error: str = ""
    #: Its send options (validity, due time, priority, receipts), encoded for the lane entry.
    options: str = ""


def decide(ev: Event, view: dict[str, Any], why: str | None) -> tuple[Single, list[str]]:
    """Pure: the message and its text (none when it is cancelled, expired, or fails to render)."""
    m = ev.params
    single = Single(
        id=str(m["id"]), gateway=str(m.get("gateway") or ""), lane=str(m.get("lane") or "bulk"),
        purpose=ev.purpose or DEFAULT_PURPOSE, options=options_of(m).encode(),
    )  # fmt: skip
    if why is not None:
        return replace(single, status=why, error=f"{why} before it was sent"), []
    if "text" in m:
        return single, [str(m["text"])]
    try:
        fields = m.get("fields") or {}
        return single, [template(str(m["template"])).render({"contact": view, "fields": fields})]
    except RenderError as exc:
        return replace(single, status="failed", error=f"template: {exc.reason}"), []


def options_of(m: dict[str, Any]) -> SendOptions:
    """A single message's send options from its params (``exp``, ``sat``, ``pri``, ``rcpt``,
    ``src``)."""
    exp, sat, pri, rcpt, src = m.get("exp"), m.get("sat"), m.get("pri"), m.get("rcpt"), m.get("src")
    return SendOptions(
        expires_ms=exp if isinstance(exp, int) else 0, deliver_at_ms=sat if isinstance(sat, int) else 0,
        priority=pri if isinstance(pri, int) else None, receipts=rcpt if isinstance(rcpt, str) else "",
        sender=src if isinstance(src, str) else "",
    )  # fmt: skip


def record(ev: Event, single: Single, text: str, status: str, now: int, gateway: str) -> dict[str, Any]:
    """The message's record in the contact's log (``api``: a single message, not a flow's)."""
    first = str(ev.params.get("st") or "queued")
    history: list[list[Any]] = [[first, ev.accepted_ms]]
    if status != first or now != ev.accepted_ms:
        history.append([status, now])
    rec: dict[str, Any] = {
        "id": single.id, "dir": "out", "text": text, "to": ev.contact, "gateway": gateway,
        "status": status, "at": now, "flow": None, "cause": ev.ref, "api": True,
        "purpose": single.purpose, "lane": single.lane, "history": history,
    }  # fmt: skip
    if single.error:
        rec["error"] = single.error
    if "smpp" in ev.params:  # an ESME's: its receipt follows the message's events
        rec["smpp"] = ev.params["smpp"]
    return rec


def outcome_event(ev: Event, single: Single, now: int) -> str:
    """The ``message`` outcome event of a single message its turn finished (not sent)."""
    e = {
        "t": "message", "c": ev.contact, "m": single.id, "status": single.status, "error": single.error,
        "at": now,
    }  # fmt: skip
    if "smpp" in ev.params:
        e["smpp"] = ev.params["smpp"]
    return orjson.dumps(e).decode()
