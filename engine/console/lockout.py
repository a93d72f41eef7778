"""Lockout after repeated failed logins: ``console.lockout_attempts`` failures of one user name
within ``console.lockout_window`` refuse that name (even with the right password) until enough
of those failures are older than the window.

Failures are kept per name as typed, known or not (``p:cf:U``, a zset of attempt -> ms), so a
stranger guessing names learns nothing from the lockout. Attempts while locked out are not
counted (they would keep the lock on for ever). Times come from the engine's clock.
"""

from __future__ import annotations

import secrets
from typing import cast

from engine.core import keys
from engine.core.clock import Clock
from engine.core.store import Store


class Lockout:
    """Count failed logins per user name and say whether (and until when) it is locked out."""

    def __init__(self, store: Store, clock: Clock, attempts: int, window_s: float) -> None:
        self.store, self.clock = store, clock
        self.attempts = attempts
        self.window_ms = int(window_s * 1000)

    async def locked_until(self, user: str) -> int | None:
        """Unix ms when ``user``'s lockout ends, or None when it may try."""
        now = self.clock.now_ms()
        rows = cast(
            list[tuple[bytes, float]],
            await self.store.redis.zrangebyscore(
                keys.console_failures(user), now - self.window_ms, "+inf", withscores=True
            ),
        )
        scores = [int(score) for _, score in rows]
        if len(scores) < self.attempts:
            return None
        # Locked while `attempts` failures lie within the window: until the one that would
        # leave fewer has aged out of it.
        return sorted(scores)[len(scores) - self.attempts] + self.window_ms

    async def failed(self, user: str) -> bool:
        """Record a failed login of ``user``; True when this failure locks it out."""
        now = self.clock.now_ms()
        key = keys.console_failures(user)
        async with self.store.redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", now - self.window_ms - 1)
            pipe.zadd(key, {secrets.token_hex(6): now})
            pipe.zcount(key, now - self.window_ms, "+inf")
            pipe.pexpire(key, self.window_ms)
            _, _, count, _ = await pipe.execute()
        return int(count) >= self.attempts

    async def succeeded(self, user: str) -> None:
        """A good login forgets the name's failures."""
        await self.store.redis.delete(keys.console_failures(user))
