"""The typed call of timers.lua: fire one shard's due timers (its header comment is the
contract; tests/test_scripts_contract.py calls the script through this with edge inputs)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.core import keys


@dataclass(frozen=True, slots=True)
class TimersArgs:
    shard: int
    now_ms: int
    #: At most this many timers per call.
    limit: int = 500

    def to_keys(self) -> list[str]:
        """KEYS[1] the shard's timers, KEYS[2] its inbound stream."""
        return [keys.timers(self.shard), keys.inbound_stream(self.shard)]

    def to_argv(self) -> list[int]:
        return [self.now_ms, self.limit]
