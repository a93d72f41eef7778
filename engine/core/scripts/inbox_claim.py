"""The typed call of inbox_claim.lua: one person claims a handed-off contact (its header comment
is the contract; tests/test_inbox.py calls the script through this)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.core import keys


@dataclass(frozen=True, slots=True)
class InboxClaimArgs:
    number: str
    #: The contact's shard (``keys.shard_of(number, engine.shards)``).
    shard: int
    operator: str
    now_ms: int
    #: The ``claimed`` outcome event (json), appended only when this claim takes the contact.
    event: str
    events_max: int = 100_000

    def to_keys(self) -> list[str]:
        """KEYS[1..2]: the contact's inbox hash, the shard's outcome stream."""
        return [keys.handoff(self.number, self.shard), keys.flow_events(self.shard)]

    def to_argv(self) -> list[str | int]:
        return [self.operator, self.now_ms, self.events_max, self.event]

    @staticmethod
    def parse(raw: Any) -> tuple[str, str]:
        """(``ok`` | ``same`` | ``taken`` | ``missing``, the holder or "")."""
        status = raw[0].decode() if isinstance(raw[0], bytes) else str(raw[0])
        holder = raw[1] if len(raw) > 1 else b""
        return status, holder.decode() if isinstance(holder, bytes) else str(holder)
