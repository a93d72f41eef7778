"""The typed call of move.lua: fail one message over to the next connector of its route (its
header comment is the contract; tests/test_gateway_scripts_contract.py calls the script through
this with edge inputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.core import keys
from gateways.scripts import as_text


@dataclass(frozen=True, slots=True)
class MoveArgs:
    #: The lane the message is in now, and the same lane (same shard) of the next connector.
    from_stream: str
    to_stream: str
    #: The entry id in ``from_stream``.
    entry_id: str | bytes
    message_id: str
    contact: str
    #: The contact's shard (the lanes are this shard's).
    shard: int
    text: str
    #: The next connector, and the rest of the route after it.
    target: str
    rest: tuple[str, ...]
    queued_ms: int
    now_ms: int
    #: Why (the failure seen at the connector it leaves).
    why: str
    group: str = keys.OUTBOUND_GROUP
    #: A cancellable message's hand-over key (its entry's ``u``), carried to the new entry; "" none.
    handover: str = ""
    #: Its send options (its entry's ``o``, engine/core/sendopts.py), carried over; "" none.
    options: str = ""

    def to_keys(self) -> list[str]:
        """KEYS[1] from, KEYS[2] to, KEYS[3] the contact's message records, KEYS[4] the hand-over."""
        out = [self.from_stream, self.to_stream, keys.message_records(self.contact, self.shard)]
        return [*out, self.handover] if self.handover else out

    def to_argv(self) -> list[str | bytes | int]:
        return [
            self.group, self.entry_id, self.message_id, self.contact, self.text, ",".join(self.rest),
            self.queued_ms, self.now_ms, self.target, self.why, self.options,
        ]  # fmt: skip


def parse_moved(raw: Any) -> str | None:
    """The new entry id, or None when the entry was already gone (acknowledged elsewhere)."""
    new = as_text(raw)
    return new or None
