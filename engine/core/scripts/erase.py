"""The typed call of erase.lua: erase one contact atomically (its header comment is the
contract; tests/test_scripts_contract.py calls the script through this with edge inputs)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.core import keys


@dataclass(frozen=True, slots=True)
class EraseArgs:
    number: str
    #: The hashed ledger key the consent ledger moves to (engine/crm/erasure.py):
    #: ``keys.erased_consent_ledger(digest, shard)``, in the contact's shard.
    erased_ledger: str
    #: The contact's shard (every key is in its slot: its timers live there too).
    shard: int
    now_ms: int
    #: Who erased it ("api", "cli").
    source: str
    #: The contact's timer members (found with ZSCAN before the call).
    timer_members: tuple[str | bytes, ...] = ()

    def to_keys(self) -> list[str]:
        """KEYS[1..10]."""
        n, s = self.number, self.shard
        return [
            keys.contact(n, s), keys.session(n, s), keys.message_index(n, s),
            keys.message_records(n, s), keys.counted_sends(n, s), keys.governance(n, s),
            keys.consent_ledger(n, s), self.erased_ledger, keys.timers(s), keys.contact_index(s),
        ]  # fmt: skip

    def to_argv(self) -> list[str | bytes | int]:
        return [self.now_ms, self.source, self.number, *self.timer_members]
