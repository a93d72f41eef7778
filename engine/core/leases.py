"""Shard leases: each shard is read by exactly one process of a role at a time (its inbound
stream by one worker, its outbound lanes by one sender; ``role`` names whose leases these are,
and each role's leases are apart: ``keys.leases(role)``). Below, "worker" stands for either.

One contact's events all land on one shard (``keys.shard_of``), so one reader per shard means
one writer per contact: a contact's texts are processed strictly in order however many worker
processes run. Leases live in Redis (``lease.lua``, Redis server time) and are renewed every
third of their length; shards are spread evenly over the live workers (a worker holding more
than its share releases the surplus between batches, a worker holding less takes free ones).

A worker that stops renewing (killed, frozen, cut off from Redis) loses its shards when its
lease runs out, or at once when its supervisor saw it die (:func:`release_dead`); another worker
takes them and first claims (XAUTOCLAIM) the entries the dead one had read but not
acknowledged. Workers renew at once when ``lease.lua`` tells them the shares changed
(``keys.lease_changes(role)``), so freed shards do not wait for the next periodic renewal.

A worker also *fences itself*: it starts no new turn once its own lease may have run out
(counted from when it sent the renewal, which is before Redis stamped it), so two workers never
process one shard at once. A commit already in flight at that moment (or sent by a worker just
before it was killed and run by Redis after its shards were released) is still safe: the commit
script's compare-and-swap and last-applied check make the slower of two writers decide again or
commit nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis

from engine.core import keys
from engine.core.scripts.lease import LeaseArgs, LeaseTick
from engine.core.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tick:
    """What one renewal found: this worker's fair share, what it holds, what it just took."""

    share: int
    held: frozenset[int]
    taken: frozenset[int]


class ShardLeases:
    """The leases of one worker (``me``) over ``shards`` inbound shards."""

    def __init__(self, store: Store, me: str, shards: int, ttl_s: float, role: str = "worker") -> None:
        self.store = store
        self.role = role
        self.me = me
        self.shards = shards
        self.ttl_ms = max(1, int(ttl_s * 1000))
        #: time.monotonic() until which the leases held at the last renewal are certainly ours.
        self.valid_until = 0.0

    def valid(self, margin: float = 0.0) -> bool:
        """True while the last renewal's leases cannot have run out (``margin`` seconds to spare)."""
        return time.monotonic() + margin < self.valid_until

    async def tick(self) -> Tick:
        """Heartbeat, renew, and take free shards up to this worker's share."""
        sent = time.monotonic()
        got = LeaseTick.parse(await self._run("tick"))
        self.valid_until = sent + self.ttl_ms / 1000
        return Tick(got.share, got.held, got.taken)

    async def release(self, shards: set[int]) -> None:
        if shards:
            await self._run("release", tuple(sorted(shards)))

    async def leave(self) -> None:
        """Give up every shard and the heartbeat, so other workers take over at once."""
        self.valid_until = 0.0
        await self._run("leave")

    async def watch(self, renew_now: asyncio.Event, stop: asyncio.Event) -> None:
        """Until ``stop``: listen on ``keys.lease_changes(role)`` (lease.lua publishes there when a
        holder joins or leaves, a heartbeat expires, or shards are given up) and set
        ``renew_now`` on news from another holder, so its freed shards are taken within
        milliseconds rather than at the next periodic renewal. Best effort: while Redis is away
        the periodic renewals carry on alone."""
        period = self.ttl_ms / 3000
        while not stop.is_set():
            try:
                async with self.store.redis.pubsub(ignore_subscribe_messages=True) as ps:
                    await ps.subscribe(keys.lease_changes(self.role))
                    renew_now.set()  # what changed while not listening
                    while not stop.is_set():
                        msg = await ps.get_message(timeout=period)
                        if msg is not None and msg["data"] not in (self.me, self.me.encode()):
                            renew_now.set()
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), period)
            except Exception:
                log.exception(
                    "%s %s: unexpected error watching lease changes; continuing", self.role, self.me
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), period)

    async def _run(self, mode: Literal["tick", "release", "leave"], release: tuple[int, ...] = ()) -> Any:
        call = LeaseArgs(self.me, self.ttl_ms, self.shards, mode, release, self.role)
        return await self.store.run("lease", keys=call.to_keys(), args=call.to_argv())


async def release_dead(store: Store, worker: str, shards: int, ttl_s: float, role: str = "worker") -> None:
    """Give up the shards and heartbeat of ``worker``, which is known to be dead (its supervisor
    reaped the process): the others take its shards now instead of when its leases run out."""
    await ShardLeases(store, worker, shards, ttl_s, role).leave()


async def lease_holders(store: Store, role: str = "worker") -> dict[int, str]:
    """Shard -> the process of ``role`` holding an unexpired lease on it (for /healthz)."""
    raw = await store.redis.hgetall(keys.leases(role))
    sec, usec = await store.redis.time()
    now_ms = int(sec) * 1000 + int(usec) // 1000
    out = {}
    for shard, value in raw.items():
        who, _, exp = (value.decode() if isinstance(value, bytes) else value).rpartition("|")
        if int(exp) > now_ms:
            out[int(shard)] = who
    return out
