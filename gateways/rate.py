"""A connector's rate: slots handed out in priority order, paced by a bucket shared in Redis.

Every process that sends through a connector asks the same Redis key (``rate.lua``, GCRA on
Redis's clock) for the next slot, so the connector's rate holds however many processes send.
Within a process, waiting messages are served replies first, then bulk, each in arrival order:
a bulk backlog never stands between a customer and their answer for more than one slot.

A message of N segments takes N slots' worth of time and leaves when its first slot is due, so
segments stay evenly spaced; with single-segment messages no one-second window ever holds more
than ``rate`` of them (each process books at most one slot ahead of time, ``MAX_AHEAD_S``, and
the spacing leaves ``HEADROOM`` for jitter on the way to the carrier).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from engine.core.store import Store
from gateways.scripts import install
from gateways.scripts.rate import RateArgs, RateReply

log = logging.getLogger(__name__)

#: A slot is only booked when it is due within this long (then the process waits for it).
MAX_AHEAD_S = 0.05
#: Segments are spaced for 98% of the configured rate: 20 ms of network and scheduling jitter
#: per second can then never put one segment too many into a carrier's one-second window.
HEADROOM = 0.98


@dataclass(eq=False)
class Ticket:
    """One message waiting for its slot. ``urgent`` tickets (the reply lane) go first."""

    cost: int
    urgent: bool
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Pacer:
    """``async with Pacer(...)``; ``await pacer.acquire(ticket)`` returns when the message may go."""

    def __init__(self, store: Store, gateway: str, rate: float) -> None:
        self.store = store
        install(store, ("rate",))  # a pacer used alone (a benchmark, a test) brings its script
        self.gateway = gateway
        self.rate = rate
        self._interval_us = int(1_000_000 / (rate * HEADROOM)) if rate > 0 else 0
        self._queues: dict[bool, deque[Ticket]] = {True: deque(), False: deque()}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Pacer:
        if self.rate > 0:
            self._task = asyncio.create_task(self._run(), name=f"parley-pacer-{self.gateway}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def waiting(self) -> int:
        return len(self._queues[True]) + len(self._queues[False])

    async def acquire(self, ticket: Ticket) -> None:
        if self.rate <= 0:
            return
        self._queues[ticket.urgent].append(ticket)
        self._wake.set()
        await ticket.done

    def promote(self, ticket: Ticket) -> None:
        """A later reply to the same contact waits behind this bulk message: serve it as a reply."""
        if ticket.urgent:
            return
        ticket.urgent = True
        with contextlib.suppress(ValueError):
            self._queues[False].remove(ticket)
            self._queues[True].append(ticket)

    def _next(self) -> Ticket | None:
        for urgent in (True, False):
            q = self._queues[urgent]
            while q and q[0].done.done():  # cancelled while waiting (shutdown)
                q.popleft()
            if q:
                return q[0]
        return None

    async def _run(self) -> None:
        backoff = 0.05
        ahead_us = int(MAX_AHEAD_S * 1_000_000)
        while True:
            ticket = self._next()
            if ticket is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                call = RateArgs(self.gateway, self._interval_us, ticket.cost, ahead_us)
                got = RateReply.parse(await self.store.run("rate", keys=call.to_keys(), args=call.to_argv()))
                granted, wait_us = got.granted, got.wait_us
                backoff = 0.05
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                log.warning("pacer %s: Redis unavailable (%s); retrying in %.2fs", self.gateway, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except Exception:
                log.exception("pacer %s: unexpected error; continuing", self.gateway)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if not granted:
                # Another process booked ahead of us: ask again when our turn could come.
                await asyncio.sleep(max(wait_us - ahead_us, 1000) / 1_000_000)
                continue
            self._queues[ticket.urgent].remove(ticket)
            if wait_us > 0:
                await asyncio.sleep(wait_us / 1_000_000)
            if not ticket.done.done():
                ticket.done.set_result(None)
