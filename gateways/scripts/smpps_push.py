"""The typed call of smpps_push.lua: queue a receipt or an MO for an SMPP server account's binds,
once (its header comment is the contract)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.core import keys
from gateways.scripts import as_text


@dataclass(frozen=True, slots=True)
class SmppsPushArgs:
    account: str
    #: What the entry is, as a digest (a receipt: its message and status; an MO: its gateway and
    #: provider id): the same one twice is queued once.
    digest: str
    max_len: int
    min_id_ms: int
    seen_ttl_s: int
    fields: tuple[tuple[str, str], ...]

    def to_keys(self) -> list[str]:
        """KEYS[1] the queue, KEYS[2] the once-only key."""
        return [keys.smpp_server_queue(self.account), keys.smpp_server_seen(self.account, self.digest)]

    def to_argv(self) -> list[str | int]:
        return [self.max_len, self.min_id_ms, self.seen_ttl_s, *(x for kv in self.fields for x in kv)]


def parse_pushed(raw: Any) -> tuple[bool, str]:
    """(queued now, its entry id)."""
    fresh, entry = raw
    return bool(int(fresh)), as_text(entry)
