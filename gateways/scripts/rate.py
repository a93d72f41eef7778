"""The typed call of rate.lua: reserve the next slot of a connector's shared rate (its header
comment is the contract; tests/test_gateway_scripts_contract.py calls the script through this).
Kept thin: the pacing around it lives in gateways/rate.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.core import keys


@dataclass(frozen=True, slots=True)
class RateArgs:
    gateway: str
    #: The emission interval of one segment (us), the segments to reserve, and how far ahead a
    #: reservation may be booked (us) before it is refused.
    interval_us: int
    segments: int
    max_ahead_us: int

    def to_keys(self) -> list[str]:
        """KEYS[1]: the connector's theoretical arrival time."""
        return [keys.rate(self.gateway)]

    def to_argv(self) -> list[int]:
        return [self.interval_us, self.segments, self.max_ahead_us]


@dataclass(frozen=True, slots=True)
class RateReply:
    """Reserved (send after ``wait_us``), or refused (ask again later)."""

    granted: bool
    wait_us: int

    @classmethod
    def parse(cls, raw: Any) -> RateReply:
        granted, wait_us = raw
        return cls(bool(int(granted)), int(wait_us))
