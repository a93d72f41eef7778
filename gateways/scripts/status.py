"""The typed call of status.lua: record a status change of one message (its header comment is
the contract; tests/test_gateway_scripts_contract.py calls the script through this with edge
inputs). The keys and arguments that only matter with a provider id, or with an outbound entry
to acknowledge, default to placeholders the script does not read."""

from __future__ import annotations

from dataclasses import dataclass

from engine.core import keys


@dataclass(frozen=True, slots=True)
class StatusArgs:
    contact: str
    message_id: str
    status: str
    now_ms: int
    #: The outcome stream's length to keep (approximately).
    events_max: int
    error: str = ""
    #: The provider's message id, its field in the provider-id map, the map's current bucket
    #: for it, that bucket's TTL (s) and where a receipt that came first is parked.
    provider_id: str = ""
    provider_field: str = "-"
    provider_ids_key: str = "-"
    provider_ids_ttl_s: int = 0
    parked_key: str = "-"
    #: The outbound lane the message came from, and its entry there to XACK + XDEL ("" none).
    stream: str = "-"
    entry_id: str | bytes = ""
    group: str = ""
    #: The connector that sent it, recorded on the message ("" leaves it as it is).
    gateway: str = ""

    def to_keys(self) -> list[str]:
        """KEYS[1..5]."""
        return [
            keys.message_records(self.contact), self.provider_ids_key, self.stream, self.parked_key,
            keys.flow_events(),
        ]  # fmt: skip

    def to_argv(self) -> list[str | bytes | int]:
        return [
            self.message_id, self.status, self.now_ms, self.provider_id, self.error, self.contact,
            self.provider_ids_ttl_s, self.group, self.entry_id, self.gateway, self.events_max,
            self.provider_field,
        ]  # fmt: skip
