"""The typed call of smpps_binds.lua: an SMPP server account's bind leases (its header comment
is the contract)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine.core import keys


@dataclass(frozen=True, slots=True)
class SmppsBindsArgs:
    account: str
    mode: Literal["take", "renew", "drop"]
    bind_id: str
    max_binds: int
    lease_ms: int

    def to_keys(self) -> list[str]:
        """KEYS[1]: the account's binds."""
        return [keys.smpp_server_binds(self.account)]

    def to_argv(self) -> list[str | int]:
        return [self.mode, self.bind_id, self.max_binds, self.lease_ms]
