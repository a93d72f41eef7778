"""The typed call of intake.lua: accept one inbound text at most once (its header comment is
the contract; tests/test_scripts_contract.py calls the script through this with edge inputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class IntakeArgs:
    #: The dedupe map's current bucket for the text's slot, then the older ones, newest first.
    current_bucket: str
    #: The contact's inbound shard stream.
    stream: str
    #: The payload's digest (the same id with another text is a conflict).
    digest: str
    #: TTL of the current bucket (s).
    ttl_s: int
    #: The text's field in the buckets, "GW:ID:h".
    field: str
    #: The stream entry, as flat field/value pairs.
    entry: tuple[str, ...]
    older_buckets: tuple[str, ...] = ()

    def to_keys(self) -> list[str]:
        """KEYS[1..2], then the older buckets (all in the contact's shard's slot)."""
        return [self.current_bucket, self.stream, *self.older_buckets]

    def to_argv(self) -> list[str | int]:
        return [self.digest, self.ttl_s, self.field, *self.entry]


@dataclass(frozen=True, slots=True)
class IntakeReply:
    #: "ok" (appended), "dup" (this exact text before) or "conflict" (the id with another text).
    status: str
    #: The stream entry id it was (or had been) appended as.
    entry: str

    @classmethod
    def parse(cls, raw: Any) -> IntakeReply:
        status, entry = (x.decode() if isinstance(x, bytes) else str(x) for x in raw)
        return cls(status, entry)
