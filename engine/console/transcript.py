"""One contact's transcript for the console's Conversations page: its message log, in and out,
oldest first, each reply with its latency and delivery status.

A reply's latency is read from the log alone (no clock of the console's): the turn that answers
a customer's text ``in-S-ms-seq`` records its messages with ``cause`` ``S/ms-seq`` and a status
history (engine/conversation/turn.py; the senders add ``sent``, receipts ``delivered``...):

    received ──turn_ms──▶ queued ──▶ sent          (latency_ms: received to sent, on the wire)
                                       └──▶ delivered / failed (the carrier's receipt)

A message sent for another cause (a journey start, a timer, a person's reply from the inbox, a
single message through the API) answers no text and has no latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from engine.conversation import conversations
from engine.core import keys
from engine.core.store import Store

#: Statuses as the API spells them (the log says ``blocked`` for what the gate refused).
SPELLED = {"blocked": "refused"}
#: Statuses after which nothing more happens to a message.
FINAL = frozenset({"received", "delivered", "failed", "expired", "rejected", "refused", "cancelled"})


@dataclass(frozen=True)
class Line:
    """One message of a transcript (times in ms since the epoch)."""

    id: str
    direction: str  # in | out
    text: str
    at: int
    status: str
    history: tuple[tuple[str, int | None], ...]
    flow: str | None = None
    gateway: str | None = None
    error: str | None = None
    #: The person who wrote it (a reply from the inbox).
    operator: str | None = None
    #: A STOP / START / HELP answer, not the flow's.
    governance: bool = False
    #: The customer's text this message answers (its id), if any.
    reply_to: str | None = None
    #: From the customer's text being received to this reply being queued (the engine's turn).
    turn_ms: int | None = None
    #: From the customer's text being received to this reply being sent to the carrier.
    latency_ms: int | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL


@dataclass(frozen=True)
class Transcript:
    lines: list[Line]
    #: The sequence number to read older messages from (None: this is the start of the log).
    older: int | None


def answered_id(cause: str) -> str:
    """The id of the customer's text a message with ``cause`` (``S/ms-seq``) answers, if the
    cause was a text: ``in-S-ms-seq``."""
    return "in-" + cause.replace("/", "-", 1)


def _first(history: list[Any], status: str) -> int | None:
    return next((int(h[1]) for h in history if h[0] == status and h[1] is not None), None)


def _line(m: dict[str, Any], texts: dict[str, dict[str, Any]]) -> Line:
    history = m.get("history") or []
    status = str(m.get("status", ""))
    reply_to = turn_ms = latency_ms = None
    if m.get("dir") == "out" and m.get("cause"):
        asked = texts.get(answered_id(str(m["cause"])))
        if asked is not None:
            reply_to, received = asked["id"], int(asked.get("at") or 0)
            queued = _first(history, "queued")
            sent = _first(history, "sent")
            turn_ms = max(0, queued - received) if queued is not None else None
            latency_ms = max(0, sent - received) if sent is not None else None
    return Line(
        id=str(m["id"]), direction=str(m.get("dir", "out")), text=str(m.get("text") or ""),
        at=int(m.get("at") or 0), status=SPELLED.get(status, status),
        history=tuple((SPELLED.get(str(h[0]), str(h[0])), h[1]) for h in history),
        flow=m.get("flow") or None, gateway=m.get("gateway") or None, error=m.get("error") or None,
        operator=m.get("operator") or None, governance=bool(m.get("governance")),
        reply_to=reply_to, turn_ms=turn_ms, latency_ms=latency_ms,
    )  # fmt: skip


def assemble(records: Sequence[dict[str, Any]], earlier: Sequence[dict[str, Any]] = ()) -> list[Line]:
    """The lines of ``records`` (a log page, oldest first), each reply matched to the text it
    answers among ``records`` and ``earlier`` (texts older than the page): pure, no I/O."""
    texts = {str(m["id"]): m for m in (*earlier, *records) if m.get("dir") == "in"}
    return [_line(m, texts) for m in records]


async def transcript(
    store: Store, shards: int, number: str, *, limit: int = 50, before: int | None = None
) -> Transcript:
    """The newest ``limit`` messages of ``number`` logged before sequence ``before`` (all:
    None), oldest first, with latencies; two round trips, three when a reply on the page answers
    a text that is on the previous one."""
    page, older = await conversations.find_messages(store, shards, number, limit, before=before)
    on_page = {str(m["id"]) for m in page}
    missing = sorted(
        {answered_id(str(m["cause"])) for m in page if m.get("dir") == "out" and m.get("cause")} - on_page
    )
    earlier: list[dict[str, Any]] = []
    if missing:
        raw = await store.redis.hmget(keys.message_records(number, keys.shard_of(number, shards)), missing)
        earlier = [orjson.loads(r) for r in raw if r is not None]
    return Transcript(assemble(page, earlier), older)
