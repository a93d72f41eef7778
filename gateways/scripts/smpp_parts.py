"""The typed call of smpp_parts.lua: record the parts of a multipart SMPP message, one call per
slot of the connector (its header comment is the contract; tests/test_gateway_scripts_contract.py
calls the script through this with edge inputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateways.scripts import as_text


@dataclass(frozen=True, slots=True)
class Part:
    """One part: its number (1..), its id as a field, and where its receipt may be parked."""

    number: int
    field: str
    parked_key: str


@dataclass(frozen=True, slots=True)
class SmppPartsArgs:
    #: The first part's id as a field (the message's provider id), and the message's part count.
    first: str
    total: int
    #: The segment map's current bucket for this call's slot, and its TTL (s).
    segments_key: str
    segments_ttl_s: int
    #: This call's parts (those whose ids fall in the slot).
    parts: tuple[Part, ...]
    #: The roll-up hash (receipts per part, in the first part's slot): only in the call for that
    #: slot, which comes last; "" in the others.
    rollup_key: str = ""
    rollup_ttl_s: int = 0
    #: (roll-up call only) receipts the other slots' calls found parked: part -> "status|error".
    carried: tuple[tuple[int, str], ...] = ()

    def to_keys(self) -> list[str]:
        """KEYS[1] the segment bucket, the parts' parked keys, then the roll-up (if any)."""
        rollup = [self.rollup_key] if self.rollup_key else []
        return [self.segments_key, *(p.parked_key for p in self.parts), *rollup]

    def to_argv(self) -> list[str | int]:
        return [
            self.first, self.total, self.segments_ttl_s, self.rollup_ttl_s, len(self.parts),
            *(x for p in self.parts for x in (p.number, p.field)), *(x for c in self.carried for x in c),
        ]  # fmt: skip


def parse_rollup(raw: Any) -> dict[str, str]:
    """A flat reply of part number ("1", "2", ...) -> "status|error": the roll-up hash (the
    roll-up call), or the receipts found parked (the other calls)."""
    text = [as_text(x) for x in raw]
    return {text[i]: text[i + 1] for i in range(0, len(text), 2)}
