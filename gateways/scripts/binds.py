"""The typed call of binds.lua: an SMPP connector's bind leases, global across processes (its
header comment is the contract; tests/test_gateway_scripts_contract.py calls it through this)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from engine.core import keys


@dataclass(frozen=True, slots=True)
class BindsArgs:
    gateway: str
    holder: str
    ttl_ms: int
    binds: int
    mode: Literal["tick", "release", "leave"]
    #: With "release": the indexes given up (their binds already closed).
    release: tuple[int, ...] = ()

    def to_keys(self) -> list[str]:
        """KEYS[1]: the connector's bind leases."""
        return [keys.binds(self.gateway)]

    def to_argv(self) -> list[str | int]:
        return [self.holder, self.ttl_ms, self.binds, self.mode, *self.release]


@dataclass(frozen=True, slots=True)
class BindsTick:
    """The reply to "tick": this process's share, the indexes it holds (renewed), those newly
    taken (bind them now) and those beyond its share (close their binds, then release them)."""

    share: int
    held: frozenset[int]
    taken: frozenset[int]
    surplus: frozenset[int]

    @classmethod
    def parse(cls, raw: Any) -> BindsTick:
        share, held, taken, surplus = raw
        return cls(int(share), *(frozenset(int(i) for i in xs) for xs in (held, taken, surplus)))
