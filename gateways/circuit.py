"""A circuit breaker per connector: stop hammering a provider that is down, probe it, come back;
and a pause for a provider that is up but asks us to slow down.

closed     every message is sent; ``failures`` retryable failures in a row open the circuit.
open       nothing is sent for ``cooldown``; messages fail over to the next connector of their
           route (when nothing suggests the provider took them) or wait.
half-open  after the cooldown one message is sent as a probe, with the short ``probe_timeout``
           (so a hanging provider costs seconds, not the whole send timeout): an answer closes
           the circuit and releases the waiting messages at once (their own back-off is cut
           short too); no answer opens it again for twice the cooldown (up to ``cooldown_max``).

A rate signal (HTTP 429, SMPP throttling) is an answer from a live provider, not a failure: it
never counts towards opening the circuit (and a probe that gets one closes it), it pauses the
whole connector for the time the provider asked (or, when it did not say, a pause doubling from
``throttle_backoff`` while the signals go on), and every message waits for that pause to end.

Every wait is on the injected clock, to absolute deadlines (``Clock.sleep_until``), so the
messages waiting for one pause or one cooldown wake together.
"""

from __future__ import annotations

import asyncio
import logging

from engine.core.clock import Clock
from engine.core.metrics import Metrics

log = logging.getLogger(__name__)

#: The shortest pause a rate signal makes (a ``Retry-After: 0`` must not become a busy loop).
MIN_PAUSE_S = 0.05


class Circuit:
    def __init__(
        self,
        gateway: str,
        failures: int,
        cooldown: float,
        cooldown_max: float,
        clock: Clock,
        metrics: Metrics,
        *,
        throttle_backoff: float = 1.0,
        throttle_backoff_max: float = 60.0,
    ) -> None:
        self.gateway = gateway
        self.threshold = failures
        self.base_cooldown = cooldown
        self.cooldown_max = cooldown_max
        self.throttle_backoff = throttle_backoff
        self.throttle_backoff_max = throttle_backoff_max
        self.clock = clock
        self.metrics = metrics
        self.failures = 0
        self.cooldown = cooldown
        self.open_until: float | None = None  # monotonic seconds while open
        self.probing = False
        #: Monotonic seconds until which a rate signal holds every send.
        self.paused_until = 0.0
        self._throttles = 0  # rate signals without a time, in a row (the pause doubles)
        self._closes = 0  # times the circuit closed (ends back-offs early)
        self._changed = asyncio.Event()
        metrics.circuit(gateway, False)

    @property
    def is_open(self) -> bool:
        return self.open_until is not None

    @property
    def paused(self) -> bool:
        return self.clock.monotonic() < self.paused_until

    @property
    def state(self) -> str:
        if self.open_until is None:
            return "closed"
        return "half-open" if self.probing or self.clock.monotonic() >= self.open_until else "open"

    async def admit(self) -> bool:
        """Wait until this message may be sent; True when it is the probe of a half-open circuit."""
        while True:
            now = self.clock.monotonic()
            if now < self.paused_until:
                await self._wait(self.paused_until)
                continue
            if self.open_until is None:
                return False
            if now >= self.open_until and not self.probing:
                self.probing = True
                log.info("gateway %s: circuit half-open, sending one probe", self.gateway)
                return True
            if now < self.open_until:
                await self._wait(self.open_until)
            else:
                self._changed.clear()
                await self._changed.wait()  # a probe is out: its result decides

    async def rest(self, seconds: float) -> None:
        """A message's back-off after a failure: ``seconds``, or less if the circuit closes
        meanwhile (a probe got through: the provider is back, waiting longer helps no one)."""
        closes = self._closes
        deadline = self.clock.monotonic() + seconds
        while self._closes == closes and self.clock.monotonic() < deadline:
            await self._wait(deadline)

    async def _wait(self, deadline: float) -> None:
        """Until ``deadline``, or until something changes (opened, closed, paused)."""
        self._changed.clear()
        sleeper = asyncio.ensure_future(self.clock.sleep_until(deadline))
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait({sleeper, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            changed.cancel()

    def success(self, probe: bool) -> None:
        self.failures = 0
        self._throttles = 0
        if self.open_until is not None and (probe or not self.probing):
            self._close()

    def failure(self, probe: bool, retry_after: float | None = None) -> None:
        """A retryable failure (the provider is unwell); rejections and rate signals do not count.
        An opened circuit waits at least the provider's ``retry_after``, when it gave one."""
        self.failures += 1
        if probe:
            self.cooldown = min(self.cooldown * 2, self.cooldown_max)
            self._open(retry_after)
        elif self.open_until is None and self.failures >= self.threshold:
            self._open(retry_after)

    def throttled(self, probe: bool, retry_after: float | None) -> float:
        """A rate signal: pause every send for ``retry_after`` (not said: the doubling pause);
        returns the pause left. The provider answered, so a probe's rate signal closes the circuit.

        Signals that arrive during a pause belong to it (the answers to sends already in flight)
        and do not lengthen a pause of unsaid length; a longer ``retry_after`` does."""
        now = self.clock.monotonic()
        if retry_after is None:
            if now < self.paused_until:
                wait = self.paused_until - now
            else:
                wait = min(self.throttle_backoff * 2.0 ** min(self._throttles, 16), self.throttle_backoff_max)
                self._throttles += 1
        else:
            wait = retry_after
        wait = max(wait, MIN_PAUSE_S)
        if now + wait > self.paused_until:
            self.paused_until = now + wait
            log.info("gateway %s: provider asks to slow down; pausing sends for %.1fs", self.gateway, wait)
        if probe:
            self._close()
        self._changed.set()
        return wait

    def abandon_probe(self) -> None:
        """The probe ended without an answer either way (expired, rejected): let another go."""
        if self.probing:
            self.probing = False
            self._changed.set()

    def _close(self) -> None:
        if self.open_until is None:
            return
        log.info("gateway %s: circuit closed", self.gateway)
        self.open_until = None
        self.probing = False
        self.cooldown = self.base_cooldown
        self._closes += 1
        self.metrics.circuit(self.gateway, False)
        self._changed.set()

    def _open(self, retry_after: float | None) -> None:
        wait = max(self.cooldown, retry_after or 0.0)
        self.open_until = self.clock.monotonic() + wait
        self.probing = False
        log.warning(
            "gateway %s: circuit open after %d failures; next probe in %.1fs",
            self.gateway, self.failures, wait,
        )  # fmt: skip
        self.metrics.circuit(self.gateway, True)
        self._changed.set()
