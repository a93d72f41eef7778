"""The typed call of claim.lua: take a cancellable message for sending (one key, the hand-over
key its lane entry names, in its shard's slot). tests/test_gateway_scripts_contract.py calls the
script through this with edge inputs."""

from __future__ import annotations

from dataclasses import dataclass

from gateways.scripts import as_text

#: How long a message stays "handed" (a cancel meanwhile is told it is too late): longer than a
#: message stays in a sender's hands (max_age, 1 h by default); a single message's record says
#: it was sent after that, and a journey's delivery is no longer in any stream or lane.
HANDED_TTL_S = 2 * 86400


@dataclass(frozen=True, slots=True)
class ClaimArgs:
    #: ``p:hv:T:U``, as the lane entry's ``u`` field names it (built by engine/core/keys.py).
    handover: str
    now_ms: int
    handed_ttl_s: int = HANDED_TTL_S

    def to_keys(self) -> list[str]:
        return [self.handover]

    def to_argv(self) -> list[str | int]:
        return [self.now_ms, self.handed_ttl_s]


def parse_verdict(raw: bytes | str) -> str:
    """``ok``, ``cancelled`` or ``expired``."""
    return as_text(raw)
