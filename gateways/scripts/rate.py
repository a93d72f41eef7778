"""The typed call of rate.lua: book the next send slot of a connector's shared rate, give one
back, or record when a late send really went (its header comment is the contract;
tests/test_gateway_scripts_contract.py calls the script through this). Kept thin: the pacing
around it (clock mapping, late sends, queues) lives in gateways/rate.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.core import keys
from gateways.scripts import as_text


@dataclass(frozen=True, slots=True)
class RateArgs:
    gateway: str
    #: Pace: us per segment, as a decimal string (rate.lua keeps fractions of a microsecond).
    spacing_us: str
    segments: int
    #: How far ahead a slot may be booked (us) before the booking is refused.
    max_ahead_us: int
    #: The window a send's segments are counted in (us: one second plus the wire's jitter) and
    #: how many segments it may hold.
    window_us: int
    cap: int
    #: How far behind its pace a connector may catch up (us).
    catch_up_us: int
    #: The booking of a slot given back (missed, never sent) or restamped, or "".
    give_back: str = ""
    #: The clock in us ("" or None: Redis's TIME; contract tests pass their own).
    now_us: int | None = None
    #: Restamp: the booking ``give_back`` was sent late, at this time (us on Redis's clock).
    sent_us: int | None = None
    #: More reservations in the same call after the first (``segments``): their segments, in
    #: order. The script books them as that many calls in a row would, up to the first beyond
    #: the horizon.
    more: tuple[int, ...] = ()

    def to_keys(self) -> list[str]:
        """KEYS[1]: the connector's booked slots."""
        return [keys.rate(self.gateway)]

    def to_argv(self) -> list[str | int]:
        now = "" if self.now_us is None else self.now_us
        sent = "" if self.sent_us is None else self.sent_us
        return [
            self.spacing_us, self.segments, self.max_ahead_us, self.window_us, self.cap, now,
            self.catch_up_us, self.give_back, sent, ",".join(map(str, self.more)),
        ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class RateReply:
    """Booked (``booking`` names it, to give it back or restamp it) or refused; ``slot_us`` is
    when it is (or would have been; restamped: the time recorded) and ``now_us`` the clock the
    script used. ``overdue``: a restamp that came too late to be sure of the ceiling."""

    granted: bool
    slot_us: int
    now_us: int
    booking: str
    overdue: bool = False
    #: The reservations of ``RateArgs.more`` that were made, in order: (slot_us, booking).
    more: tuple[tuple[int, str], ...] = ()

    @classmethod
    def parse(cls, raw: Any) -> RateReply:
        granted, slot_us, now_us, booking = raw[:4]
        more = tuple((int(raw[i]), as_text(raw[i + 1])) for i in range(4, len(raw) - 1, 2))
        return cls(bool(int(granted)), int(slot_us), int(now_us), as_text(booking), int(granted) == 2, more)
