"""The engine worker: consumes the inbound shard streams and runs turns.

Ordering: entries are read in batches; a batch is split by contact, each contact's events run
one after another in stream order, different contacts run concurrently. The batch is
acknowledged (XACK + XDEL, one round trip) only after every turn in it committed, so a worker
that dies mid-batch leaves its entries pending; on start it first re-reads its own pending
entries (stream id ``0``) and the commit script drops those already applied. The read loop
itself (pending first, outages, lost groups, stopping) is :class:`engine.consumer.StreamConsumer`.

Known limit (the session-engine issue lifts it): one consumer reads every shard, so a process
runs one worker; several processes would share shards without per-contact ordering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from engine import keys
from engine.consumer import BACKOFF_MAX_S, Entry, StreamConsumer
from engine.events import Event
from engine.turn import TurnDone, run_turn

if TYPE_CHECKING:
    from engine.runtime import Runtime

log = logging.getLogger(__name__)

#: An event that fails this many times (a bug, not an outage) goes to the dead-letter stream.
MAX_FAILURES = 3


class Worker(StreamConsumer):
    """``async with Worker(rt):`` reads every inbound shard and polls the timers."""

    label = "worker"

    def __init__(self, rt: Runtime, index: int = 0) -> None:
        self.shards = {keys.inbound_stream(s): s for s in range(rt.config.engine.shards)}
        super().__init__(
            rt.store.redis, keys.INBOUND_GROUP, f"{socket.gethostname()}-w{index}", list(self.shards)
        )
        self.rt = rt
        self.stop_timeout = rt.config.engine.shutdown_timeout
        self.listeners: list[Callable[[TurnDone], None]] = []
        self._timer_task: asyncio.Task[None] | None = None
        self._failures: dict[str, int] = {}
        self._pause = 0.1

    async def __aenter__(self) -> Worker:
        await super().__aenter__()
        self._timer_task = asyncio.create_task(self._poll_timers(), name="parley-timers")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping.set()
        if self._timer_task is not None:
            await self._timer_task  # finishes its round trip in hand, then sees the stop
        await super().__aexit__(*exc)

    async def room(self) -> int:
        return self.rt.config.engine.batch_size

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
        """Move every due timer onto its shard's stream (one round trip for all shards)."""
        now = self.rt.clock.now_ms()
        async with self.rt.store.redis.pipeline(transaction=False) as pipe:
            for shard in self.shards.values():
                await self.rt.store.run(
                    "timers",
                    keys=[keys.timers(shard), keys.inbound_stream(shard)],
                    args=[now, 500],
                    client=pipe,
                )
            fired = await pipe.execute()
        return sum(int(n) for n in fired)

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
        done_counts = await asyncio.gather(*(self._contact_chain(evs) for evs in by_contact.values()))
        acked: dict[str, list[bytes]] = defaultdict(list)
        dead: list[tuple[Event, dict[bytes, bytes]]] = []
        complete = True
        for evs, n in zip(by_contact.values(), done_counts, strict=True):
            for ev, _ in evs[:n]:
                acked[keys.inbound_stream(ev.shard)].append(ev.entry_id.encode())
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
        return complete

    async def _contact_chain(self, evs: list[tuple[Event, dict[bytes, bytes]]]) -> int:
        """Run one contact's events in order; returns how many completed (the rest stay pending)."""
        for n, (ev, _) in enumerate(evs):
            try:
                done = await run_turn(self.rt, ev)
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                log.warning("turn %s: Redis failed (%s); left pending", ev.ref, exc)
                return n
            except Exception:
                self._failures[ev.ref] = self._failures.get(ev.ref, 0) + 1
                log.exception("turn %s failed (attempt %d); left pending", ev.ref, self._failures[ev.ref])
                return n
            for listener in self.listeners:
                listener(done)
        return len(evs)
