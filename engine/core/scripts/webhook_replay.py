"""The typed call of webhook_replay.lua: replay dead letters of one outcome webhook (its header
comment is the contract; tests/test_scripts_contract.py calls the script through this)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.core import keys


@dataclass(frozen=True, slots=True)
class WebhookReplayArgs:
    #: The webhook's index in the configuration.
    webhook: int
    #: Entry ids of dead letters to replay.
    ids: tuple[str | bytes, ...]

    def to_keys(self) -> list[str]:
        """KEYS[1] its dead letters, KEYS[2] its replay stream."""
        return [keys.webhook_dead(self.webhook), keys.webhook_retry(self.webhook)]

    def to_argv(self) -> list[str | bytes]:
        return list(self.ids)
