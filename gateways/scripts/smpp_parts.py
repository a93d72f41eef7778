"""The typed call of smpp_parts.lua: record the parts of a multipart SMPP message (its header
comment is the contract; tests/test_gateway_scripts_contract.py calls the script through this
with edge inputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Part:
    """One part: its id as a field, its segment bucket, and where its receipt may be parked."""

    field: str
    segments_key: str
    parked_key: str


@dataclass(frozen=True, slots=True)
class SmppPartsArgs:
    #: The roll-up hash (receipts per part), named by the first part's id.
    rollup_key: str
    #: The parts, first to last (the first part's field is the message's provider id).
    parts: tuple[Part, ...]
    rollup_ttl_s: int
    segments_ttl_s: int

    def to_keys(self) -> list[str]:
        """KEYS[1] the roll-up, then for each part its segment bucket and its parked key."""
        return [self.rollup_key, *(k for p in self.parts for k in (p.segments_key, p.parked_key))]

    def to_argv(self) -> list[str | int]:
        return [self.parts[0].field, self.rollup_ttl_s, self.segments_ttl_s, *(p.field for p in self.parts)]


def parse_rollup(raw: Any) -> dict[str, str]:
    """The roll-up hash: part number ("1", "2", ...) -> "status|error" of the receipts known so far."""
    text = [x.decode() if isinstance(x, bytes) else str(x) for x in raw]
    return {text[i]: text[i + 1] for i in range(0, len(text), 2)}
