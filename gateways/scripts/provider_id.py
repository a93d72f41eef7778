"""The typed call of provider_id.lua: map a send's provider id to its message in the
connector's ``{GW:K}`` slot, and find a receipt parked under it (its header comment is the
contract; tests/test_gateway_scripts_contract.py calls the script through this with edge inputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateways.scripts import as_text


@dataclass(frozen=True, slots=True)
class ProviderIdArgs:
    #: The provider-id map's current bucket for the id's slot, and that bucket's TTL (s).
    provider_ids_key: str
    provider_ids_ttl_s: int
    #: Where a receipt that came first is parked (the same slot).
    parked_key: str
    #: The provider id as a field (itself, or a digest when long: engine/core/idmaps.py).
    field: str
    contact: str
    message_id: str

    def to_keys(self) -> list[str]:
        """KEYS[1] the map's bucket, KEYS[2] the parked receipt."""
        return [self.provider_ids_key, self.parked_key]

    def to_argv(self) -> list[str | int]:
        return [self.field, f"{self.contact} {self.message_id}", self.provider_ids_ttl_s]


def parse_parked(raw: Any) -> str:
    """The parked receipt ("status|error|ms"), or "" when none came first."""
    return as_text(raw or "")
