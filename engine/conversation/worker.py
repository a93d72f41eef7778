"""The engine worker: consumes the inbound shard streams and runs turns.

Ordering: entries are read in batches; a batch is split by contact, each contact's events run
one after another in stream order, different contacts run concurrently. Each event's entry is
acknowledged (XACK + XDEL) by its turn's commit script, atomically with what the turn wrote (no
round trip of its own), so a worker that dies mid-batch leaves pending exactly the entries
not applied; on start it first re-reads its own pending entries (stream id ``0``) and the
commit script drops (and acknowledges) those already applied. Only an entry moved to the
dead letters is acknowledged apart. The read loop
itself (pending first, outages, lost groups, stopping) is :class:`engine.core.consumer.StreamConsumer`.

Which shards a worker reads is decided by leases (:mod:`engine.shards`): one reader per shard,
shards spread over the live workers (``parley run --workers N`` or ``parley worker`` processes on
several hosts). A shard taken over from a dead worker has its pending entries claimed first.
Between batches (never during one) the worker applies lease changes: it gives up its surplus
shards and claims newly taken ones. It starts no turn once its leases may have run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import defaultdict
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from engine.conversation.events import Event
from engine.conversation.ports import TurnServices
from engine.conversation.turn import TurnDone, run_turn
from engine.core import keys
from engine.core.consumer import BACKOFF_MAX_S, Entry, StreamConsumer, claim_pending, ensure_group
from engine.core.leases import ShardLeases, Tick
from engine.core.scripts.timers import TimersArgs

log = logging.getLogger(__name__)

#: An event that fails this many times (a bug, not an outage) goes to the dead-letter stream.
MAX_FAILURES = 3


async def fire_timers(rt: TurnServices, shards: list[int] | None = None) -> int:
    """Move every due timer of ``shards`` (default: all) onto its shard's stream, in one round trip.

    Safe from anywhere: the timers script is atomic, so a timer fires once however many call it."""
    now = rt.clock.now_ms()
    targets = list(range(rt.config.engine.shards)) if shards is None else shards

    async def add(pipe: Pipeline) -> None:
        for shard in targets:
            call = TimersArgs(shard, now)
            await rt.store.run("timers", keys=call.to_keys(), args=call.to_argv(), client=pipe)

    return sum(int(n) for n in await rt.store.coalescer.run(add))


def worker_id(index: int) -> str:
    """This process's name as worker ``index`` (its leases and consumer name); its senders, when
    it runs them, are ``worker_id(index) + SENDERS_SUFFIX``, so whoever sees it die can release both."""
    return f"{socket.gethostname()}-{os.getpid()}-w{index}"


#: What a worker process's sender leases add to its worker id.
SENDERS_SUFFIX = "-s"


class Worker(StreamConsumer):
    """``async with Worker(rt):`` reads the inbound shards it holds leases on and polls their timers."""

    label = "worker"

    def __init__(self, rt: TurnServices, index: int = 0) -> None:
        cfg = rt.config.engine
        self.shards = {keys.inbound_stream(s): s for s in range(cfg.shards)}
        #: Unique per process run, so a restarted worker never mistakes a dead run's lease for its own.
        self.me = worker_id(index)
        super().__init__(rt.store.redis, keys.INBOUND_GROUP, self.me, [])
        self.rt = rt
        self.stop_timeout = cfg.shutdown_timeout
        self.listeners: list[Callable[[TurnDone], None]] = []
        self.leases = ShardLeases(rt.store, self.me, cfg.shards, cfg.lease_ttl)
        #: The shards this worker reads now (changed only between batches).
        self.owned: frozenset[int] = frozenset()
        self._held: frozenset[int] = frozenset()
        self._to_claim: set[int] = set()
        self._to_release: set[int] = set()
        self._lease_changed = asyncio.Event()
        self._leases_stop = asyncio.Event()
        #: Renew now: another worker joined or left, or gave shards up (see _watch_leases).
        self._renew_now = asyncio.Event()
        #: Stop starting turns this long before the leases could run out.
        self._fence_margin = cfg.lease_ttl / 4
        self._lease_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self._failures: dict[str, int] = {}
        self._pause = 0.1

    async def __aenter__(self) -> Worker:
        # The first renewal before reading anything, so a lone worker starts with every shard.
        await self._ensure_groups()
        try:
            self._take(await self.leases.tick())
            await self._rebalance()
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
            log.warning("worker %s: cannot take shard leases yet (%s); retrying", self.me, exc)
        self._lease_task = asyncio.create_task(self._keep_leases(), name="parley-leases")
        self._watch_task = asyncio.create_task(self._watch_leases(), name="parley-lease-changes")
        self._timer_task = asyncio.create_task(self._poll_timers(), name="parley-timers")
        await super().__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping.set()
        self._lease_changed.set()
        if self._timer_task is not None:
            await self._timer_task  # finishes its round trip in hand, then sees the stop
        await super().__aexit__(*exc)  # the batch in hand finishes (leases still renewed)
        self._leases_stop.set()
        self._renew_now.set()
        if self._watch_task is not None:
            self._watch_task.cancel()  # it may be waiting for a message for a while
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        if self._lease_task is not None:
            await self._lease_task
        if self.owned or self._held:
            try:
                await self.leases.leave()  # the other workers take the shards over at once
            except (aioredis.RedisError, OSError) as exc:
                log.warning("worker %s: could not release its leases (%s); they expire", self.me, exc)

    async def _ensure_groups(self) -> None:
        for stream in self.shards:
            await ensure_group(self.redis, stream, self.group)

    # -- leases ------------------------------------------------------------------------------

    def _take(self, tick: Tick) -> None:
        """Note a renewal's result; the read loop applies it between batches."""
        self._held = tick.held
        self._to_claim |= tick.taken
        surplus = len(tick.held) - tick.share
        # The highest-numbered surplus, so repeated (or late) renewals pick the same shards.
        self._to_release = set(sorted(tick.held, reverse=True)[:surplus]) if surplus > 0 else set()
        if tick.taken or self._to_release or tick.held != self.owned:
            self._lease_changed.set()

    async def _keep_leases(self) -> None:
        """Renew every third of the lease time, and at once when told the shares changed."""
        period = self.leases.ttl_ms / 3000
        was_valid = True
        while not self._leases_stop.is_set():
            self._renew_now.clear()  # before the renewal: news during it renews again
            try:
                self._take(await self.leases.tick())
                was_valid = True
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                if was_valid:
                    log.warning("worker %s: cannot renew shard leases (%s)", self.me, exc)
                was_valid = False
            except Exception:
                log.exception("worker %s: unexpected error renewing leases; continuing", self.me)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._renew_now.wait(), period)

    async def _watch_leases(self) -> None:
        """Renew at once when another worker joins, leaves or gives shards up (ShardLeases.watch)."""
        await self.leases.watch(self._renew_now, self._leases_stop)

    async def _rebalance(self) -> None:
        """Between batches: give up the surplus, claim what was taken over, read what is held."""
        release = self._to_release & self._held
        self._to_release = set()
        if release:
            # On a cluster a read of these streams may be outstanding: stopped first, so
            # nothing reaches this worker after the next owner claimed the pending entries.
            await self.stop_reading([keys.inbound_stream(s) for s in release])
            await self.leases.release(release)
            self._held = self._held - release
            log.info("worker %s: handed over shards %s", self.me, sorted(release))
        held = self._held
        claim = self._to_claim & held
        self._to_claim &= held  # a shard lost again before it was claimed needs no claim
        for shard in sorted(claim):
            await self._claim(shard)  # raises on an outage: nothing is read until every claim is done
            self._to_claim.discard(shard)
        if claim or held != self.owned:
            self._recover = True  # what was claimed is read (in stream order) before anything new
            log.info("worker %s: reading shards %s", self.me, sorted(held))
        self.owned = held
        self.streams = [keys.inbound_stream(s) for s in sorted(held)]

    async def _claim(self, shard: int) -> None:
        """Take over every entry another consumer read but never acknowledged on ``shard``.

        Safe without an idle threshold: this worker holds the shard's lease, so the previous
        reader has stopped (it fenced itself, or it is dead)."""
        claimed = await claim_pending(self.redis, keys.inbound_stream(shard), self.group, self.me)
        if claimed:
            log.info("worker %s: claimed %d unacknowledged entries of shard %d", self.me, claimed, shard)

    def can_work(self) -> bool:
        return self.leases.valid(self._fence_margin)

    async def room(self) -> int:
        while not self._stopping.is_set():
            if self._lease_changed.is_set():
                self._lease_changed.clear()
                await self._rebalance()
            if self.owned and self.can_work():
                return self.rt.config.engine.batch_size
            if self.owned:
                self._recover = True  # fenced: when the leases are back, re-read pending first
                await self.stop_reading()  # (cluster) nothing delivered once another may own it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lease_changed.wait(), self.leases.ttl_ms / 3000)
        return 0

    async def handle(self, entries: list[Entry], recovering: bool) -> bool:
        if not entries:
            return False  # nothing (more) pending: on to new entries
        if await self._process(entries):
            self._pause = 0.1
            return recovering  # while recovering, read pending until none are left
        # Something stayed pending: re-read pending entries first, so that a contact's later
        # texts never overtake the one that failed.
        await asyncio.sleep(self._pause)
        self._pause = min(self._pause * 2, BACKOFF_MAX_S)
        return True

    async def fire_timers(self) -> int:
        """Fire the due timers of the shards this worker holds."""
        if not (self.owned and self.can_work()):
            return 0
        return await fire_timers(self.rt, sorted(self.owned))

    async def _poll_timers(self) -> None:
        interval = self.rt.config.engine.timer_poll
        while not self._stopping.is_set():
            try:
                await self.fire_timers()
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                log.warning("timers: Redis unavailable (%s)", exc)
            except Exception:
                log.exception("timers: unexpected error; continuing")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)

    async def _process(self, entries: list[Entry]) -> bool:
        """Run a batch; ack what completed. Returns False if anything was left pending."""
        by_contact: dict[str, list[tuple[Event, dict[bytes, bytes]]]] = defaultdict(list)
        for stream_key, entry_id, fields in entries:
            shard = self.shards[stream_key]
            ev = Event.from_entry(shard, entry_id, fields)
            by_contact[ev.contact].append((ev, fields))
        chains = await asyncio.gather(*(self._contact_chain(evs) for evs in by_contact.values()))
        acked: dict[str, list[bytes]] = defaultdict(list)
        dead: list[tuple[Event, dict[bytes, bytes]]] = []
        complete = True
        for evs, (n, unacked) in zip(by_contact.values(), chains, strict=True):
            for ev in unacked:
                acked[keys.inbound_stream(ev.shard)].append(ev.entry_id.encode())
            for ev, _ in evs[:n]:
                self._failures.pop(ev.ref, None)
            if n < len(evs):
                complete = False
                ev, fields = evs[n]
                if self._failures.get(ev.ref, 0) >= MAX_FAILURES:
                    dead.append((ev, fields))
                    acked[keys.inbound_stream(ev.shard)].append(ev.entry_id.encode())
                    self._failures.pop(ev.ref, None)
        if not (dead or acked):
            return complete
        async with self.rt.store.redis.pipeline(transaction=False) as pipe:
            for ev, fields in dead:
                log.error(
                    "event %s failed %d times; moved to %s",
                    ev.ref,
                    MAX_FAILURES,
                    keys.dead_letters(),
                )
                pipe.xadd(keys.dead_letters(), {**fields, b"ref": ev.ref.encode()})  # type: ignore[dict-item]
            for stream, ids in acked.items():
                pipe.xack(stream, keys.INBOUND_GROUP, *ids)
                pipe.xdel(stream, *ids)
            await pipe.execute()
        if dead:
            self.rt.metrics.dead_lettered(len(dead))
        return complete

    async def _contact_chain(self, evs: list[tuple[Event, dict[bytes, bytes]]]) -> tuple[int, list[Event]]:
        """Run one contact's events in order; returns how many completed (the rest stay pending)
        and those of them whose commit did not acknowledge them."""
        unacked: list[Event] = []
        for n, (ev, _) in enumerate(evs):
            if not self.can_work():
                return n, unacked  # the leases may have run out: another worker may own the shard now
            try:
                done = await run_turn(self.rt, ev, ack_group=self.group)
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                log.warning("turn %s: Redis failed (%s); left pending", ev.ref, exc)
                return n, unacked
            except Exception:
                self._failures[ev.ref] = self._failures.get(ev.ref, 0) + 1
                log.exception("turn %s failed (attempt %d); left pending", ev.ref, self._failures[ev.ref])
                return n, unacked
            if not done.acked:
                unacked.append(ev)
            for listener in self.listeners:
                listener(done)
        return len(evs), unacked
