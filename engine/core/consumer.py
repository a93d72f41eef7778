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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Self

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

log = logging.getLogger(__name__)

BLOCK_MS = 500
BACKOFF_MAX_S = 5.0
#: (stream key, entry id, fields)
Entry = tuple[str, bytes, dict[bytes, bytes]]


async def ensure_group(r: aioredis.Redis, stream: str, group: str) -> None:
    """Create the consumer group (and the stream) if missing; ``0`` so no earlier entry is skipped."""
    try:
        await r.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


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

    async def _ensure_groups(self) -> None:
        for stream in self.streams:
            await ensure_group(self.redis, stream, self.group)

    async def _run(self) -> None:
        backoff = 0.1
        recovering = True
        while not self._stopping.is_set():
            try:
                count = await self.room()
                if self._recover:
                    recovering, self._recover = True, False
                if count <= 0 or self._stopping.is_set() or not self.streams:
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
