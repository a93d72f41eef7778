"""One read loop over a Redis consumer group, shared by the worker, the senders and the caller.

What every consumer needs, in one place:
- its own pending entries first (a previous run died holding them), then new ones;
- a Redis outage is logged and backed off (up to 5 s), and pending entries are read again
  afterwards; a group lost with Redis's data (NOGROUP) is created again;
- a bug in handling an entry is logged and never kills the loop;
- stopping cancels a read that is only blocked waiting (nothing is lost: an entry delivered but
  never received stays pending), and otherwise lets the entries in hand finish.

A subclass says how much it can take (:meth:`room`) and what to do with what it read
(:meth:`handle`).

On one Redis the loop reads every stream with one XREADGROUP. A Redis Cluster refuses a command
naming keys of two slots (CROSSSLOT), so there the loop (:meth:`StreamConsumer._run_cluster`)
keeps one read outstanding per slot (the streams of one shard share a slot and are read
together), each on its own connection to that slot's node:

    slot A  XREADGROUP ... BLOCK ---------> entries --+
    slot B  XREADGROUP ... BLOCK ------------------------------> (still waiting)
    slot C  XREADGROUP ... BLOCK ----> entries -------+--> handle(A + C) --> read A, C again

It waits for the first read to come back, hands every read that has come back to
:meth:`handle` together, and reads a slot again only after its entries were handled, so each
stream's entries are handled in order, one batch at a time, as on one Redis. Pending-first
holds per slot: a slot reads its own pending entries (id ``0``, not blocking) when it starts,
after an outage, and when ``handle`` asks for it. A stream that leaves :attr:`streams` (its
lease went elsewhere) has its read cancelled: an entry Redis delivered that the cancelled read
never received stays pending, and whoever reads the stream next claims it. Stopping cancels
the reads that are only waiting, as on one Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Self, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ClusterDownError, RedisClusterException, ResponseError, TryAgainError

log = logging.getLogger(__name__)

BLOCK_MS = 500
#: How long the loop pauses when it has no stream to read (or no room) before asking again.
IDLE_S = 0.05
BACKOFF_MAX_S = 5.0
#: Redis cannot be read right now: one node is away, or a cluster is failing over (its client
#: retried first). Logged as an outage (a warning, no traceback) and backed off.
OUTAGE = (
    aioredis.ConnectionError,
    aioredis.TimeoutError,
    OSError,
    ClusterDownError,
    TryAgainError,
    RedisClusterException,
)
#: (stream key, entry id, fields)
Entry = tuple[str, bytes, dict[bytes, bytes]]


async def ensure_group(r: aioredis.Redis, stream: str, group: str) -> None:
    """Create the consumer group (and the stream) if missing; ``0`` so no earlier entry is skipped."""
    try:
        await r.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def claim_pending(r: aioredis.Redis, stream: str, group: str, me: str, min_idle_ms: int = 0) -> int:
    """Take over (XAUTOCLAIM) every entry of ``stream`` another consumer of ``group`` read and
    has held for ``min_idle_ms`` without acknowledging it, then forget the other consumers that
    hold nothing (and were idle that long). How many were taken."""
    start: bytes | str = "0-0"
    claimed = 0
    while True:
        nxt, entries, *_ = await r.xautoclaim(
            stream, group, me, min_idle_time=min_idle_ms, start_id=start, count=1000
        )
        claimed += len(entries)
        if nxt in (b"0-0", "0-0"):
            break
        start = nxt
    for info in await r.xinfo_consumers(stream, group):
        name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
        if name != me and not int(info["pending"]) and int(info["idle"]) >= min_idle_ms:
            await r.xgroup_delconsumer(stream, group, name)
    return claimed


class StreamConsumer:
    """``async with`` starts the loop; leaving it stops the loop (see the module docstring)."""

    #: Names the consumer in log lines.
    label = "consumer"

    def __init__(self, redis: aioredis.Redis, group: str, consumer: str, streams: list[str]) -> None:
        self.redis = redis
        self.group = group
        self.consumer = consumer
        self.streams = streams
        #: False while Redis cannot be read (shown by /healthz).
        self.healthy = False
        self.stop_timeout = 10.0
        self._stopping = asyncio.Event()
        self._idle = False
        #: Set by a subclass to re-read pending entries before new ones (e.g. after claiming some).
        self._recover = False
        self._task: asyncio.Task[None] | None = None
        #: Cluster: the outstanding read of each slot group (see the module docstring).
        self._reads: dict[tuple[str, ...], asyncio.Task[Any]] = {}
        self._stopped: set[tuple[str, ...]] = set()

    async def room(self) -> int:
        """How many entries to read next; may wait until there is room."""
        return 256

    async def handle(self, entries: list[Entry], recovering: bool) -> bool:
        """Deal with what was read; return True to read pending entries again next time."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self._ensure_groups()
        self.healthy = True
        self._task = asyncio.create_task(self._run(), name=f"parley-{self.label}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping.set()
        if self._task is None:
            return
        if self._idle:
            self._task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.stop_timeout)
        except TimeoutError:
            log.warning(
                "%s did not finish within %.0fs; unacknowledged work stays pending",
                self.label,
                self.stop_timeout,
            )
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        except asyncio.CancelledError:
            if not self._task.cancelled():
                raise

    async def _nothing_to_read(self) -> None:
        """No stream to read (a sender holding no shard yet) or no room: pause instead of
        asking again at once, which would never yield to the event loop (a process spinning,
        deaf even to SIGTERM)."""
        if not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), IDLE_S)

    async def _ensure_groups(self) -> None:
        for stream in self.streams:
            await ensure_group(self.redis, stream, self.group)

    async def _run(self) -> None:
        if isinstance(cast(object, self.redis), RedisCluster):
            await self._run_cluster()
            return
        backoff = 0.1
        recovering = True
        while not self._stopping.is_set():
            try:
                count = await self.room()
                if self._recover:
                    recovering, self._recover = True, False
                if count <= 0 or self._stopping.is_set() or not self.streams:
                    await self._nothing_to_read()
                    continue
                self._idle = True
                resp: Any = await self.redis.xreadgroup(
                    self.group,
                    self.consumer,
                    dict.fromkeys(self.streams, "0" if recovering else ">"),
                    count=count,
                    block=None if recovering else BLOCK_MS,
                )
                self._idle = False
                self.healthy = True
                backoff = 0.1
                entries = [
                    (stream.decode(), entry_id, fields)
                    for stream, batch in resp or []
                    for entry_id, fields in batch
                    if fields  # an entry deleted while pending comes back empty
                ]
                recovering = await self.handle(entries, recovering)
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                self._idle = False
                self.healthy = False
                log.warning("%s: Redis unavailable (%s); retrying in %.1fs", self.label, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                recovering = True
            except ResponseError as exc:
                self._idle = False
                if "NOGROUP" not in str(exc):
                    log.exception("%s: Redis refused a command; continuing", self.label)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    continue
                log.warning("%s: consumer group gone (Redis lost its data?); creating it again", self.label)
                await self._ensure_groups()
            except Exception:
                # A bug must not kill the loop silently: log it, pause, keep serving.
                self._idle = False
                log.exception("%s: unexpected error; continuing", self.label)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    # -- Redis Cluster: one read per slot (see the module docstring) ---------------------------

    async def stop_reading(self, streams: list[str] | None = None) -> None:
        """Cancel the outstanding reads of ``streams`` (default: all). On a cluster a read may be
        outstanding while :meth:`room` runs: a subclass calls this before it gives a stream up
        (releases its lease) or stops working (fenced), so that nothing is delivered to it after
        the stream's next reader claimed the pending entries. On one Redis no read is
        outstanding then: nothing to do."""
        wanted = None if streams is None else set(streams)
        groups = [g for g in self._reads if wanted is None or wanted & set(g)]
        self._stopped.update(groups)
        await _cancel(self._reads, groups)

    async def _run_cluster(self) -> None:
        reads = self._reads
        #: Per slot group: read its pending entries (id 0) next, or new ones.
        recovering: dict[tuple[str, ...], bool] = {}
        backoff = 0.1
        try:
            while not self._stopping.is_set():
                try:
                    failure = await self._cluster_pass(reads, recovering)
                except Exception as exc:  # room() or a handler's own Redis calls
                    self._idle = False
                    failure = exc
                if failure is None:
                    self.healthy = True
                    backoff = 0.1
                elif await self._failed(failure, backoff):
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            self._idle = False
            await _cancel(reads, list(reads))

    async def _cluster_pass(
        self, reads: dict[tuple[str, ...], asyncio.Task[Any]], recovering: dict[tuple[str, ...], bool]
    ) -> BaseException | None:
        """Start the reads missing, wait for the first back, handle what came back; returns a
        read's failure (that slot reads its pending entries next)."""
        count = await self.room()
        if self._stopping.is_set():
            return None
        groups = _slot_groups(self.streams)
        if self._recover:
            self._recover = False
            await _cancel(reads, list(reads))
            recovering.clear()
        await _cancel(reads, [g for g in reads if g not in groups])  # leases moved away
        for g in list(recovering):
            if g not in groups:
                del recovering[g]
        for g in groups:
            recovering.setdefault(g, True)  # a slot read for the first time: its pending first
            if g not in reads and not recovering[g] and g in self._stopped:
                recovering[g] = True  # its read was cancelled: an entry may be pending unseen
        self._stopped.clear()
        if count <= 0 or not groups:
            await self._nothing_to_read()
            return None
        for g in groups:
            if g not in reads:
                reads[g] = asyncio.create_task(self._read(g, recovering[g], count))
        self._idle = True
        await asyncio.wait(list(reads.values()), return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(0)  # reads whose replies came in the same pass are handled with it
        self._idle = False
        got: dict[bool, tuple[list[tuple[str, ...]], list[Entry]]] = {True: ([], []), False: ([], [])}
        failure: BaseException | None = None
        for g in [g for g, task in reads.items() if task.done()]:
            task = reads.pop(g)
            if task.cancelled():  # (not by stop_reading, which takes it out of ``reads`` first)
                recovering[g] = True
                continue
            if (exc := task.exception()) is not None:
                recovering[g] = True  # after an outage: this slot's pending entries first
                failure = failure or exc
                continue
            handed, entries = got[recovering[g]]
            handed.append(g)
            entries += _entries(task.result())
        for mode in (True, False):
            handed, entries = got[mode]
            if handed:
                again = await self._handle(entries, mode)
                recovering.update(dict.fromkeys(handed, again))
        return failure

    async def _read(self, streams: tuple[str, ...], recovering: bool, count: int) -> Any:
        # Sent straight to the master of the streams' slot: redis-py cannot find XREADGROUP's
        # keys by itself (they follow STREAMS) and would ask the server (COMMAND GETKEYS) first,
        # a round trip per read. After a failover the node is looked up again on the next read.
        cluster: Any = self.redis
        node = cluster.get_node_from_key(streams[0])
        args: list[Any] = ["XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count]
        if not recovering:
            args += ["BLOCK", BLOCK_MS]
        args += ["STREAMS", *streams, *(["0" if recovering else ">"] * len(streams))]
        return await cluster.execute_command(*args, target_nodes=node)

    async def _handle(self, entries: list[Entry], recovering: bool) -> bool:
        """:meth:`handle`, with a bug logged (the entries stay pending: read them again)."""
        try:
            return await self.handle(entries, recovering)
        except OUTAGE as exc:
            log.warning("%s: Redis unavailable while handling (%s)", self.label, exc)
            self.healthy = False
        except Exception:
            log.exception("%s: unexpected error; continuing", self.label)
        await asyncio.sleep(0.1)
        return True

    async def _failed(self, exc: BaseException, backoff: float) -> bool:
        """A read failed: log, recreate a lost group, pause. Returns True to back off further."""
        if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
            log.warning("%s: consumer group gone (Redis lost its data?); creating it again", self.label)
            with contextlib.suppress(aioredis.RedisError, OSError):
                await self._ensure_groups()
            return False
        if isinstance(exc, OUTAGE):
            self.healthy = False
            log.warning("%s: Redis unavailable (%s); retrying in %.1fs", self.label, exc, backoff)
        else:
            log.error("%s: a read failed; continuing", self.label, exc_info=exc)
        await asyncio.sleep(backoff)
        return True


def _slot_groups(streams: list[str]) -> list[tuple[str, ...]]:
    """``streams`` grouped by cluster slot (one XREADGROUP may name one slot's keys only)."""
    by_slot: dict[int, list[str]] = {}
    for stream in streams:
        by_slot.setdefault(key_slot(stream.encode()), []).append(stream)
    return [tuple(group) for group in by_slot.values()]


def _entries(resp: Any) -> list[Entry]:
    return [
        (stream.decode(), entry_id, fields)
        for stream, batch in resp or []
        for entry_id, fields in batch
        if fields  # an entry deleted while pending comes back empty
    ]


async def _cancel(reads: dict[tuple[str, ...], asyncio.Task[Any]], groups: list[tuple[str, ...]]) -> None:
    """Stop these reads. A read cancelled after Redis delivered its entries leaves them pending
    for this consumer (read again by the recovery read, or claimed by the stream's next owner)."""
    tasks = [reads.pop(g) for g in groups if g in reads]
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
