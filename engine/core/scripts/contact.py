"""The typed call of contact.lua: write one contact whole (its header comment is the contract;
tests/test_scripts_contract.py calls the script through this with edge inputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.core import keys


@dataclass(frozen=True, slots=True)
class ContactArgs:
    number: str
    #: The contact's shard (``keys.shard_of(number, engine.shards)``).
    shard: int
    now_ms: int
    #: The contact's fields and tags, as JSON.
    fields_json: str | bytes
    tags_json: str | bytes
    #: "" removes it.
    language: str = ""
    timezone: str = ""

    def to_keys(self) -> list[str]:
        """KEYS[1..3]: the contact hash, its consent, its shard's listing index."""
        n, s = self.number, self.shard
        return [keys.contact(n, s), keys.governance(n, s), keys.contact_index(s)]

    def to_argv(self) -> list[str | bytes | int]:
        return [self.now_ms, self.fields_json, self.tags_json, self.language, self.timezone, self.number]


@dataclass(frozen=True, slots=True)
class ContactWritten:
    """The reply: whether the contact was created by this write, and its created-at (ms)."""

    created: bool
    created_at: int

    @classmethod
    def parse(cls, raw: Any) -> ContactWritten:
        created, created_at = raw
        return cls(bool(int(created)), int(created_at))
