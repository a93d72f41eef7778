"""The typed call of cancel.lua: cancel one cancellable unit unless a sender took it (its
header comment is the contract; tests/test_scripts_contract.py calls it with edge inputs)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.core import keys


@dataclass(frozen=True, slots=True)
class CancelArgs:
    shard: int
    #: The unit: a single message's id, or ``keys.start_unit(start, number)``.
    unit: str
    now_ms: int
    ttl_s: int
    events_max: int
    #: The outcome event to append when nobody else will report the cancellation.
    event: str = ""
    #: The contact and message whose record is marked cancelled (a single message).
    contact: str = ""
    message_id: str = ""
    #: A "d" timer member to remove (scheduled by send_at, or deferred by quiet hours).
    timer_member: str = ""
    #: The lane holding the message (with ``contact``), and its entry there, taken out.
    stream: str = ""
    entry_id: str | bytes = ""
    group: str = keys.OUTBOUND_GROUP

    def to_keys(self) -> list[str]:
        s = self.shard
        out = [keys.handover(s, self.unit), keys.timers(s), keys.flow_events(s)]
        if self.contact:
            out.append(keys.message_records(self.contact, s))
            if self.entry_id:
                out.append(self.stream)
        return out

    def to_argv(self) -> list[str | bytes | int]:
        return [
            self.now_ms, max(self.ttl_s, 1), self.event, self.events_max,
            self.message_id if self.contact else "", self.timer_member, self.entry_id, self.group,
        ]  # fmt: skip


def parse_outcome(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
