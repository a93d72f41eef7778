"""Events on the inbound shard streams: what a worker turns into a conversation turn.

An event is an inbound text (``kind=in``), a flow start (``kind=start``), a single message
sent outside a flow (``kind=send``, ``POST /v1/messages``: its message in ``p``), or a person's
action on a contact in the inbox (``kind=inbox``: reply, close, return to a flow;
engine/conversation/inbox.py). Each is appended to the stream of its contact's shard, so all
of one contact's events are consumed in order.
Field names are short because every accepted message is stored once in this form.

    k  kind ("in" | "start" | "inbox" ...)  c  contact (E.164)  ts  accepted at (ms)
    g  gateway (in)             x  text (in)                i   provider message id (in)
    to recipient address (in)   f  flow (start)             p   params json (start)
    n  "1": interrupt a conversation in progress (start)
    (inbox) p: {"do": "reply" | "close" | "return", "by": operator, "x": text, "m": message id};
       f: the flow a return starts
    purpose  "service" | "marketing" (start, send), when the event declares one (absent: the
             flow's purpose decides; engine/governance/consent.py)
    tk timer kind ("w" wait timeout, "x" expiry, "c" call)   tt  token (timer, call)
    ok "1" when the CRM answered (call); its answer (or the error) is JSON in x
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True)
class Event:
    shard: int
    entry_id: str  # the stream entry id, "ms-seq"
    kind: str
    contact: str
    accepted_ms: int
    gateway: str = ""
    text: str = ""
    provider_id: str = ""
    to: str = ""
    flow: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    interrupt: bool = False
    timer_kind: str = ""
    timer_token: str = ""
    ok: bool = False
    #: What the event's messages are for, when the event says (``service`` | ``marketing``;
    #: "" lets the flow's purpose decide): engine/governance/consent.py.
    purpose: str = ""

    @property
    def ref(self) -> str:
        """Globally unique reference ``S/ms-seq``; the cause of every message this turn sends."""
        return f"{self.shard}/{self.entry_id}"

    @property
    def msg_base(self) -> str:
        return f"{self.shard}-{self.entry_id}"

    def deferred_token(self) -> str:
        """This event as the token of a ``d`` timer: it is processed again when the timer fires
        (quiet hours deferring a send, a journey start scheduled for later)."""
        d = {"k": self.kind, "f": self.flow, "p": self.params, "n": self.interrupt, "tk": self.timer_kind,
             "tt": self.timer_token, "ts": self.accepted_ms}  # fmt: skip
        if self.purpose:
            d["purpose"] = self.purpose
        return orjson.dumps(d).decode()

    def undeferred(self) -> Event:
        """A fired ``d`` timer is the deferred event again (its own stream entry is the new cause)."""
        d = orjson.loads(self.timer_token)
        return Event(
            self.shard, self.entry_id, d["k"], self.contact, d["ts"], flow=d["f"], params=d["p"],
            interrupt=d["n"], timer_kind=d["tk"], timer_token=d["tt"], purpose=d.get("purpose", ""),
        )  # fmt: skip

    @classmethod
    def from_entry(cls, shard: int, entry_id: bytes, f: dict[bytes, bytes]) -> Event:
        def s(k: bytes) -> str:
            return f[k].decode() if k in f else ""

        return cls(
            shard=shard,
            entry_id=entry_id.decode(),
            kind=s(b"k"),
            contact=s(b"c"),
            accepted_ms=int(f.get(b"ts", 0)),
            gateway=s(b"g"),
            text=s(b"x"),
            provider_id=s(b"i"),
            to=s(b"to"),
            flow=s(b"f"),
            params=orjson.loads(f[b"p"]) if b"p" in f else {},
            interrupt=f.get(b"n") == b"1",
            timer_kind=s(b"tk"),
            timer_token=s(b"tt"),
            ok=f.get(b"ok") == b"1",
            purpose=s(b"purpose"),
        )


def inbound_fields(
    contact: str, gateway: str, to: str, text: str, provider_id: str, now_ms: int
) -> list[str]:
    """Stream fields of an inbound text, as a flat list (the intake script's ARGV tail)."""
    return [
        "k",
        "in",
        "c",
        contact,
        "g",
        gateway,
        "to",
        to,
        "x",
        text,
        "i",
        provider_id,
        "ts",
        str(now_ms),
    ]


def start_fields(
    contact: str, flow: str, params: dict[str, Any], interrupt: bool, now_ms: int
) -> dict[str, str | bytes]:
    fields: dict[str, str | bytes] = {
        "k": "start",
        "c": contact,
        "f": flow,
        "p": orjson.dumps(params),
        "ts": str(now_ms),
    }
    if interrupt:
        fields["n"] = "1"
    return fields


def inbox_fields(
    contact: str, action: str, operator: str, now_ms: int, *, text: str = "", flow: str = "",
    params: dict[str, Any] | None = None,
) -> dict[str, str | bytes]:  # fmt: skip
    """Stream fields of a person's action on a handed-off contact (``action``: reply, close or
    return; ``params`` are a return's start parameters)."""
    p: dict[str, Any] = {"do": action, "by": operator}
    if text:
        p["x"] = text
    if params:
        p["sp"] = params
    return {"k": "inbox", "c": contact, "f": flow, "p": orjson.dumps(p), "ts": str(now_ms)}


def send_fields(contact: str, message: dict[str, Any], purpose: str, now_ms: int) -> dict[str, str | bytes]:
    """Stream fields of a single message sent outside a flow (``message``: engine/crm/sends.py)."""
    return {"k": "send", "c": contact, "p": orjson.dumps(message), "purpose": purpose, "ts": str(now_ms)}
