"""Per-message delivery options a connector may honour: how long the message is worth
delivering, when it is due, its priority, which delivery receipts are wanted and the source
address to send from.

They come from the API (``POST /v1/messages``: ``validity``, ``send_at``, ``priority``,
``receipts``), a flow's ``sms:`` section or an ESME's submit (its source address), ride on the
message's lane entry (field ``o``, written by commit.lua and move.lua, read by the sender), and
reach the connector as ``OutboundMessage.options`` (the source address as
``OutboundMessage.sender``, which every connector sends from). The SMPP connector puts the rest
in submit_sm (validity_period, schedule_delivery_time, priority_flag, registered_delivery), with
the connector's defaults where a message says nothing; other connectors ignore them.

The wire form is compact JSON of the options that are set (``""`` when none is), so a lane
entry without options costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

#: Delivery receipt levels (SMPP registered_delivery): none; final (delivered or failed);
#: failure (only when it failed); intermediate (final plus intermediate notifications).
RECEIPT_LEVELS = ("none", "final", "failure", "intermediate")
#: priority_flag values: 0 (normal) to 3 (the highest; GSM: "very urgent").
PRIORITIES = range(4)
#: The longest source address a message may name (SMPP 3.4 source_addr: 20 octets).
MAX_SENDER = 20


@dataclass(frozen=True)
class SendOptions:
    #: When the message stops being worth delivering (epoch ms; 0: no limit of its own).
    expires_ms: int = 0
    #: When it was due (its ``send_at``, epoch ms; 0: at once).
    deliver_at_ms: int = 0
    #: priority_flag 0..3 (None: the connector's default).
    priority: int | None = None
    #: One of RECEIPT_LEVELS ("": the connector's default).
    receipts: str = ""
    #: The source address to send from ("": the connector's ``sender``): an ESME's own, kept
    #: when its account says so (``smpp_server.accounts[].keep_source``).
    sender: str = ""

    def encode(self) -> str:
        d: dict[str, int | str] = {}
        if self.expires_ms:
            d["x"] = self.expires_ms
        if self.deliver_at_ms:
            d["d"] = self.deliver_at_ms
        if self.priority is not None:
            d["p"] = self.priority
        if self.receipts:
            d["r"] = self.receipts
        if self.sender:
            d["s"] = self.sender
        return orjson.dumps(d).decode() if d else ""

    @classmethod
    def decode(cls, raw: bytes | str | None) -> SendOptions:
        """The options of a lane entry's ``o`` field; anything unreadable is no options (an entry
        written by another version is sent with the connector's defaults, never dropped)."""
        if not raw:
            return NONE
        try:
            d = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return NONE
        if not isinstance(d, dict):
            return NONE
        x, at, p, r, s = d.get("x"), d.get("d"), d.get("p"), d.get("r"), d.get("s")
        return cls(
            expires_ms=x if isinstance(x, int) and x > 0 else 0,
            deliver_at_ms=at if isinstance(at, int) and at > 0 else 0,
            priority=p if isinstance(p, int) and p in PRIORITIES else None,
            receipts=r if r in RECEIPT_LEVELS else "",
            sender=s if isinstance(s, str) and 0 < len(s) <= MAX_SENDER else "",
        )


NONE = SendOptions()
