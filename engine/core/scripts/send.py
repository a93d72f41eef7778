"""The typed call of send.lua: accept one single message (its header comment is the contract;
tests/test_scripts_contract.py calls the script through this with edge inputs)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.core import keys


@dataclass(frozen=True, slots=True)
class SendArgs:
    shard: int
    message_id: str
    owner_json: str
    owner_ttl_s: int
    #: The event's stream fields, when it is queued now.
    fields: tuple[str, ...] = ()
    #: When it is due later: the due time and the "d" timer member carrying the event.
    due_ms: int | None = None
    timer_member: str = ""
    #: "p|<expires ms>" when it has a validity, else "".
    pending: str = ""
    pending_ttl_s: int = 1
    #: The idempotency key given with the send ("" none), and how long it is kept.
    idempotency_key: str = ""
    idempotency_ttl_s: int = 86400

    def to_keys(self) -> list[str]:
        s = self.shard
        out = [
            keys.single_message(s, self.message_id), keys.inbound_stream(s), keys.timers(s),
            keys.handover(s, self.message_id),
        ]  # fmt: skip
        if self.idempotency_key:
            out.append(keys.send_idempotency(s, self.idempotency_key))
        return out

    def to_argv(self) -> list[str | int]:
        return [
            self.message_id, self.owner_json, max(self.owner_ttl_s, 1),
            "" if self.due_ms is None else self.due_ms, self.timer_member, self.pending,
            max(self.pending_ttl_s, 1), max(self.idempotency_ttl_s, 1), *self.fields,
        ]  # fmt: skip


def parse_accepted(raw: list[bytes]) -> tuple[bool, str]:
    """(fresh, entry id or "" when scheduled) or (False, the first message's id) for a repeat."""
    status, value = (x.decode() if isinstance(x, bytes) else str(x) for x in raw)
    return status == "ok", value
