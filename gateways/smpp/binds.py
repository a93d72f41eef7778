"""An SMPP connector's bind count, global across processes: a lease per bind (binds.lua).

A carrier allows a connector N binds (``binds``), whatever the number of Parley processes that
send through it. Each bind index 0..N-1 has a lease in Redis (``keys.binds(gw)``, Redis server
time); a process opens the binds of the indexes it holds and no others:

    tick (every bind_lease / 3):  renew -> open the binds of indexes newly taken
                                        -> close the binds beyond this process's share, then
                                           release their indexes (another process takes them)
    Redis unreachable:            keep the binds while the last renewal is certainly valid; when
                                  the next try would come too late (after the second failed
                                  renewal in a row, a third of a lease before the leases may run
                                  out), close them all: the fence (the index may be another
                                  process's by then)
    clean shutdown:               close every bind (unbind), then give up every index ("leave")
    killed:                       the kernel closes its sockets at once; its leases run out after
                                  bind_lease and the other processes take them at their next tick

So the SMSC never sees more than N binds from the connector: an index is bound by one process at
a time, a process closes a bind before it releases its index, and a process that cannot renew
closes its binds before its lease can run out. What it cannot cover: a process frozen (not dead)
keeps its TCP connections open while its leases run out; the carrier then sees the frozen
binds until its own keep-alive drops them (docs/smpp.md says so).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import redis.asyncio as aioredis

from engine.core.clock import Clock
from engine.core.ports import ScriptRunner
from gateways.scripts.binds import BindsArgs, BindsTick

log = logging.getLogger(__name__)


class BindLeases:
    """The bind leases of one connector in this process. ``open(i)`` / ``close(i)`` are the
    connector's: start the sessions of bind index ``i``, and stop them (unbinding, waiting at
    most ``timeout`` seconds for the SMSC)."""

    def __init__(
        self, store: ScriptRunner, gateway: str, binds: int, ttl_s: float,
        open_bind: Callable[[int], None], close_bind: Callable[[int, float], Awaitable[None]],
        clock: Clock | None = None,
    ) -> None:  # fmt: skip
        """``clock`` measures how long the last renewal stays valid (a test's clock moves it)."""
        self.store = store
        self.clock = clock or Clock()
        self.gateway = gateway
        self.binds = binds
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._open_bind, self._close_bind = open_bind, close_bind
        #: The indexes whose binds are open (or opening) here.
        self.open: set[int] = set()
        #: Set while this process holds at least one index (its sender may take messages).
        self.holding = asyncio.Event()
        self.share = 0
        self._valid_until = 0.0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """The first renewal now (binds come up at once), then every third of a lease."""
        await self.renew()
        self._task = asyncio.create_task(self._loop(), name=f"smpp {self.gateway} bind leases")

    async def stop(self) -> None:
        """Close every bind here, then give up every index, so other processes take them now."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._close(set(self.open))
        try:
            await self._run("leave")
        except (aioredis.RedisError, OSError) as exc:
            log.warning("smpp %s: bind leases not given up (%s); they run out in %.1fs",
                        self.gateway, exc, self.ttl_ms / 1000)  # fmt: skip

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)  # real time: the leases run on Redis's clock
            try:
                await self.renew()
            except Exception:  # a bug must not stop the renewals silently (the fence needs them)
                log.exception("smpp %s: bind lease renewal failed", self.gateway)

    async def renew(self) -> None:
        """One tick: renew, take free indexes up to the share, hand back the surplus; without
        Redis, close every bind once the last renewal may be running out."""
        sent = self.clock.monotonic()
        try:
            got = BindsTick.parse(await self._run("tick"))
        except (aioredis.RedisError, OSError) as exc:
            left = self._valid_until - self.clock.monotonic()
            # The next try comes a third of a lease from now: if that would leave less than a
            # quarter of one, close now (the fence), with that quarter to spare.
            if self.open and left - self.ttl_ms / 3000 < self.ttl_ms / 4000:
                log.error("smpp %s: bind leases not renewed (%s); closing binds %s before they run out",
                          self.gateway, exc, sorted(self.open))  # fmt: skip
                await self._close(set(self.open), fence=True)
            else:
                log.warning("smpp %s: bind leases not renewed (%s); %.1fs left", self.gateway, exc, left)
            return
        self._valid_until = sent + self.ttl_ms / 1000
        self.share = got.share
        keep = got.held - got.surplus
        for i in sorted(keep - self.open):
            self.open.add(i)
            self._open_bind(i)
        await self._close(self.open - keep)  # lost (ran out while Redis was away) or surplus
        if got.surplus:
            await self._run("release", tuple(sorted(got.surplus)))
        if got.taken or got.surplus:
            log.info(
                "smpp %s: bind indexes %s held here (share %d)", self.gateway, sorted(self.open), got.share
            )
        self._held()

    async def _close(self, indexes: set[int], *, fence: bool = False) -> None:
        for i in sorted(indexes):
            self.open.discard(i)
            self._held()
            await self._close_bind(i, 0.5 if fence else 2.0)
        self._held()

    def _held(self) -> None:
        if self.open:
            self.holding.set()
        else:
            self.holding.clear()

    async def _run(self, mode: Literal["tick", "release", "leave"], release: tuple[int, ...] = ()) -> Any:
        call = BindsArgs(self.gateway, self.holder, self.ttl_ms, self.binds, mode, release)
        return await self.store.run("binds", keys=call.to_keys(), args=call.to_argv())
