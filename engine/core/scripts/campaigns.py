"""The typed call of campaigns.lua: set one shard's campaign timers (its header comment is the
contract; tests/test_campaigns.py calls the script through this with edge inputs)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.core import keys


@dataclass(frozen=True, slots=True)
class CampaignTimersArgs:
    shard: int
    #: (timer member, next fire ms or None, an already-due occurrence ms or None)
    slots: tuple[tuple[str, int | None, int | None], ...]

    def to_keys(self) -> list[str]:
        """KEYS[1] the shard's timers."""
        return [keys.timers(self.shard)]

    def to_argv(self) -> list[str]:
        out: list[str] = []
        for member, due, keep in self.slots:
            out += [member, "" if due is None else str(due), "" if keep is None else str(keep)]
        return out


@dataclass(frozen=True, slots=True)
class CampaignTimersReply:
    scheduled: int
    removed: int

    @classmethod
    def parse(cls, raw: list[int]) -> CampaignTimersReply:
        return cls(int(raw[0]), int(raw[1]))
