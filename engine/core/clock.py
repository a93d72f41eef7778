"""Time, injected. The engine asks ``clock.now_ms()``; tests hand it a :class:`FakeClock`."""

from __future__ import annotations

import asyncio
import time


class Clock:
    """Wall-clock time in milliseconds since the epoch, and a monotonic timer for latencies."""

    async def sleep(self, seconds: float) -> None:
        """Wait (back-off between retries); a fake clock moves instead of waiting."""
        await asyncio.sleep(seconds)

    async def sleep_until(self, deadline: float) -> None:
        """Wait until ``monotonic()`` reaches ``deadline``: many waiters on one deadline (a
        connector's pause) wake together, and a fake clock moves to it once, not once each."""
        await self.sleep(max(0.0, deadline - self.monotonic()))

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.perf_counter()


class FakeClock(Clock):
    """A clock that moves only when told to (``advance``)."""

    def __init__(self, start_ms: int = 1_767_225_600_000) -> None:  # 2026-01-01T00:00:00Z
        self._ms = start_ms
        self._mono = 0.0

    def now_ms(self) -> int:
        return self._ms

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        await asyncio.sleep(0)

    async def sleep_until(self, deadline: float) -> None:
        if deadline > self._mono:
            self.advance(deadline - self._mono)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self._ms += int(seconds * 1000)
        self._mono += seconds
