"""The typed call of receipt.lua: find the message a delivery receipt is about, or park it (its
header comment is the contract; tests/test_gateway_scripts_contract.py calls the script through
this with edge inputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateways.scripts import as_text


@dataclass(frozen=True, slots=True)
class ReceiptArgs:
    #: Where the receipt is parked if its message is not known yet.
    parked_key: str
    #: The provider-id map's buckets over the receipt window, newest first.
    buckets: tuple[str, ...]
    #: The provider id as a field.
    field: str
    status: str
    #: The error text ("|" is the parked value's separator: written as "/").
    error: str
    now_ms: int
    park_ttl_s: int

    def to_keys(self) -> list[str]:
        """KEYS[1] parked, then the buckets (one slot: the id's, ``{GW:K}``)."""
        return [self.parked_key, *self.buckets]

    def to_argv(self) -> list[str | int]:
        return [self.field, self.status, self.error.replace("|", "/"), self.now_ms, self.park_ttl_s]


def parse_owner(raw: Any) -> str | None:
    """ "N message-id" of the message the receipt is about, or None when it was parked."""
    owner = as_text(raw)
    return owner or None
