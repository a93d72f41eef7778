"""The typed call of status.lua: record a status change of one message in the contact's shard
slot (its header comment is the contract; tests/test_gateway_scripts_contract.py calls the
script through this with edge inputs). The outbound lane is a key only when there is an entry
to acknowledge, so every key the call names is in the shard's slot."""

from __future__ import annotations

from dataclasses import dataclass

from engine.core import keys


@dataclass(frozen=True, slots=True)
class StatusArgs:
    contact: str
    #: The contact's shard (``keys.shard_of``): every key of the call carries its tag.
    shard: int
    message_id: str
    status: str
    now_ms: int
    #: The outcome stream's length to keep (approximately).
    events_max: int
    error: str = ""
    #: The provider's message id, recorded on the message ("" leaves it as it is).
    provider_id: str = ""
    #: The outbound lane the message came from (the shard's), and its entry there to XACK + XDEL
    #: ("" none: the lane is then not a key of the call).
    stream: str = ""
    entry_id: str | bytes = ""
    group: str = ""
    #: The connector that sent it, recorded on the message ("" leaves it as it is).
    gateway: str = ""
    #: A receipt that came first ("status|error|ms", from provider_id.lua), applied after.
    parked: str = ""

    def to_keys(self) -> list[str]:
        """KEYS[1] the records, KEYS[2] the shard's outcome events, KEYS[3] the lane (with an entry)."""
        lane = [self.stream] if self.entry_id else []
        return [keys.message_records(self.contact, self.shard), keys.flow_events(self.shard), *lane]

    def to_argv(self) -> list[str | bytes | int]:
        return [
            self.message_id, self.status, self.now_ms, self.provider_id, self.error, self.contact, self.group,
            self.entry_id, self.gateway, self.events_max, self.parked,
        ]  # fmt: skip
