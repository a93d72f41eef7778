"""One process at a time: a part that must run once across every Parley process (the outcome
webhooks' dispatchers: two would split a webhook's streams and lose a contact's order) runs in
whichever process holds a lease on it.

The lease is a one-shard :class:`~engine.core.leases.ShardLeases` of its own role (``keys.leases
("webhooks")``): every process that could run the part ticks it every third of
``engine.lease_ttl``; the one holding shard 0 keeps the part open, the others wait. When the
holder dies, its lease runs out (``engine.lease_ttl``) and the next tick of another process takes
it and opens the part there; a holder stopping gracefully leaves at once. A holder that cannot
renew (Redis away) closes the part once its lease may have run out, so two never run at once
for longer than a request in flight; the part itself resumes from Redis (the dispatchers re-read
their consumer's pending entries: at least once, same event id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from redis.exceptions import RedisError

from engine.core.leases import ShardLeases
from engine.core.store import Store

log = logging.getLogger(__name__)


class OneAtATime:
    """``async with OneAtATime(store, role, ttl_s, part):`` keeps ``part()`` (an async context
    manager) open while this process holds the lease of ``role``."""

    def __init__(
        self, store: Store, role: str, ttl_s: float, part: Callable[[], AbstractAsyncContextManager[Any]]
    ) -> None:
        self.role = role
        self.me = f"{socket.gethostname()}-{os.getpid()}-{role}"
        self.leases = ShardLeases(store, self.me, 1, ttl_s, role)
        self.period = ttl_s / 3
        self.part = part
        self._open: AbstractAsyncContextManager[Any] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether the part runs in this process now."""
        return self._open is not None

    async def __aenter__(self) -> OneAtATime:
        await self._step()  # a lone process opens the part before it says it started
        self._task = asyncio.create_task(self._loop(), name=f"parley-one-{self.role}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close()
        with contextlib.suppress(RedisError, OSError):
            await self.leases.leave()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self._step()
            except Exception:
                log.exception("%s: unexpected error; trying again", self.role)

    async def _step(self) -> None:
        try:
            held = 0 in (await self.leases.tick()).held
        except (RedisError, OSError) as exc:
            held = self.leases.valid()  # keep it only while the last renewal still holds
            log.warning("%s: could not renew the lease (%s)", self.role, exc)
        if held and self._open is None:
            part = self.part()
            await part.__aenter__()
            self._open = part
            log.info("%s: running here (%s)", self.role, self.me)
        elif not held and self._open is not None:
            log.info("%s: lease lost; stopping here (%s)", self.role, self.me)
            await self._close()

    async def _close(self) -> None:
        part, self._open = self._open, None
        if part is not None:
            await part.__aexit__(None, None, None)
