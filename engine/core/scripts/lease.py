"""The typed call of lease.lua: shard leases (its header comment is the contract;
tests/test_scripts_contract.py calls the script through this with edge inputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from engine.core import keys


@dataclass(frozen=True, slots=True)
class LeaseArgs:
    worker: str
    ttl_ms: int
    shards: int
    mode: Literal["tick", "release", "leave"]
    #: With "release": the shards given up.
    release: tuple[int, ...] = ()
    #: Whose leases: "worker" (inbound shards) or "sender" (outbound lanes).
    role: str = "worker"

    def to_keys(self) -> list[str]:
        """KEYS[1] leases, KEYS[2] the live holders (one slot: both carry ``{l}``)."""
        return [keys.leases(self.role), keys.live(self.role)]

    def to_argv(self) -> list[str | int]:
        return [
            self.worker,
            self.ttl_ms,
            self.shards,
            self.mode,
            keys.lease_changes(self.role),
            *self.release,
        ]


@dataclass(frozen=True, slots=True)
class LeaseTick:
    """The reply to "tick": this worker's share, the shards it holds, those newly taken."""

    share: int
    held: frozenset[int]
    taken: frozenset[int]

    @classmethod
    def parse(cls, raw: Any) -> LeaseTick:
        share, held, taken = raw
        return cls(int(share), frozenset(int(s) for s in held), frozenset(int(s) for s in taken))
