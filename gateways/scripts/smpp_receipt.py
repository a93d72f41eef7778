"""The typed call of smpp_receipt.lua: find what an SMPP receipt is about by the literal id it
names, or park it (its header comment is the contract; tests/test_gateway_scripts_contract.py
calls the script through this with edge inputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from gateways.scripts import as_text


@dataclass(frozen=True, slots=True)
class SmppReceiptArgs:
    parked_key: str
    #: The segment map's and the provider-id map's buckets over the receipt window, newest first.
    segment_buckets: tuple[str, ...]
    provider_buckets: tuple[str, ...]
    #: The receipt's id as a field.
    field: str
    status: str
    #: The error text ("|" is the parked value's separator: written as "/").
    error: str
    now_ms: int
    park_ttl_s: int

    def to_keys(self) -> list[str]:
        """KEYS[1] parked, then the segment buckets, then the provider-id buckets (one slot)."""
        return [self.parked_key, *self.segment_buckets, *self.provider_buckets]

    def to_argv(self) -> list[str | int]:
        return [
            self.field, len(self.segment_buckets), self.status, self.error.replace("|", "/"), self.now_ms,
            self.park_ttl_s,
        ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class SmppReceiptFound:
    """The reply: "part" ("first id|parts|part"), "single" ("N message-id") or "parked" ("")."""

    kind: Literal["part", "single", "parked"]
    value: str

    @classmethod
    def parse(cls, raw: Any) -> SmppReceiptFound:
        text = [as_text(x) for x in raw]
        kind = text[0]
        assert kind in ("part", "single", "parked"), kind
        return cls(kind, text[1] if len(text) > 1 else "")  # type: ignore[arg-type]
