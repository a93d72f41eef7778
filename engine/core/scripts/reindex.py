"""The typed call of reindex.lua: put one contact's members in its shard's listing index as its
records are now (its header comment is the contract)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.core import keys


@dataclass(frozen=True, slots=True)
class ReindexArgs:
    number: str
    #: The contact's shard (``keys.shard_of(number, engine.shards)``).
    shard: int

    def to_keys(self) -> list[str]:
        """KEYS[1..3]: the contact, its consent, its shard's listing index."""
        n, s = self.number, self.shard
        return [keys.contact(n, s), keys.governance(n, s), keys.contact_index(s)]

    def to_argv(self) -> list[str]:
        return [self.number]
