"""A circuit breaker per connector: stop hammering a provider that is down, probe it, come back.

closed     every message is sent; ``failures`` retryable failures in a row open the circuit.
open       nothing is sent for ``cooldown``; messages fail over to the next connector of their
           route (when nothing suggests the provider took them) or wait.
half-open  after the cooldown one message is sent as a probe: success closes the circuit and
           releases the waiting messages; failure opens it again for twice the cooldown (up to
           ``cooldown_max``).
"""

from __future__ import annotations

import asyncio
import logging

from engine.clock import Clock
from engine.metrics import Metrics

log = logging.getLogger(__name__)


class Circuit:
    def __init__(
        self,
        gateway: str,
        failures: int,
        cooldown: float,
        cooldown_max: float,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self.gateway = gateway
        self.threshold = failures
        self.base_cooldown = cooldown
        self.cooldown_max = cooldown_max
        self.clock = clock
        self.metrics = metrics
        self.failures = 0
        self.cooldown = cooldown
        self.open_until: float | None = None  # monotonic seconds while open
        self.probing = False
        self._changed = asyncio.Event()
        metrics.circuit(gateway, False)

    @property
    def is_open(self) -> bool:
        return self.open_until is not None

    @property
    def state(self) -> str:
        if self.open_until is None:
            return "closed"
        return "half-open" if self.probing or self.clock.monotonic() >= self.open_until else "open"

    async def admit(self) -> bool:
        """Wait until this message may be sent; True when it is the probe of a half-open circuit."""
        while True:
            if self.open_until is None:
                return False
            remaining = self.open_until - self.clock.monotonic()
            if remaining <= 0 and not self.probing:
                self.probing = True
                log.info("gateway %s: circuit half-open, sending one probe", self.gateway)
                return True
            self._changed.clear()
            if remaining > 0:
                sleeper = asyncio.ensure_future(self.clock.sleep(remaining))
                changed = asyncio.ensure_future(self._changed.wait())
                _, pending = await asyncio.wait({sleeper, changed}, return_when=asyncio.FIRST_COMPLETED)
                for t in pending:
                    t.cancel()
            else:
                await self._changed.wait()  # a probe is out: its result decides

    def success(self, probe: bool) -> None:
        self.failures = 0
        if self.open_until is not None and (probe or not self.probing):
            log.info("gateway %s: circuit closed", self.gateway)
            self.open_until = None
            self.probing = False
            self.cooldown = self.base_cooldown
            self.metrics.circuit(self.gateway, False)
            self._changed.set()

    def failure(self, probe: bool) -> None:
        """A retryable failure (the provider is unwell); rejections do not count."""
        self.failures += 1
        if probe:
            self.cooldown = min(self.cooldown * 2, self.cooldown_max)
            self._open()
        elif self.open_until is None and self.failures >= self.threshold:
            self._open()

    def abandon_probe(self) -> None:
        """The probe ended without an answer either way (expired, rejected): let another go."""
        if self.probing:
            self.probing = False
            self._changed.set()

    def _open(self) -> None:
        self.open_until = self.clock.monotonic() + self.cooldown
        self.probing = False
        log.warning(
            "gateway %s: circuit open after %d failures; next probe in %.0fs",
            self.gateway, self.failures, self.cooldown,
        )  # fmt: skip
        self.metrics.circuit(self.gateway, True)
        self._changed.set()
