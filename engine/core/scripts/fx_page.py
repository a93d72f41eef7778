"""The typed call of fx_page.lua: one filtered page of the flow outcome stream (its header
comment is the contract; tests/test_scripts_contract.py calls the script through this)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.core import keys


@dataclass(frozen=True, slots=True)
class FxPageArgs:
    #: Whose outcome stream: one shard's (readers page through every shard's).
    shard: int
    #: "-" or "(<id>" (after that id).
    start: str
    #: Entries to read at most.
    count: int
    #: A string the event's JSON must contain ("" for every event).
    needle: str = ""

    def to_keys(self) -> list[str]:
        """KEYS[1]: the shard's outcome stream."""
        return [keys.flow_events(self.shard)]

    def to_argv(self) -> list[str | int]:
        return [self.start, self.count, self.needle]


@dataclass(frozen=True, slots=True)
class FxPage:
    """The reply: the id to continue after ("" when the stream is exhausted) and the matching
    (entry id, event JSON) pairs, oldest first."""

    next: str
    entries: list[tuple[bytes, bytes]]

    @classmethod
    def parse(cls, raw: Any) -> FxPage:
        head = raw[0]
        nxt = head.decode() if isinstance(head, bytes) else str(head)
        return cls(nxt, [(raw[i], raw[i + 1]) for i in range(1, len(raw), 2)])

    def after(self) -> str:
        """ARGV[1] of the next page."""
        return "(" + self.next
