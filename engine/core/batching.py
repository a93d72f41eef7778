"""Coalescing: Redis commands issued by concurrent turns in one event-loop pass go out as one
pipeline, so a batch of 256 turns costs two round trips (loads, then commits) instead of 512.

A turn calls ``await coalescer.run(add)``, where ``add(pipe)`` queues that turn's commands on
the shared pipeline; it gets back just its own replies. The first request of a pass schedules
the flush with ``call_soon``, so every turn that becomes ready in the same pass (all loads of a
batch; all commits whose loads came back together) joins it. Each turn still sees its own
errors: a command Redis refused raises in the turn that queued it only; a lost connection
raises in every turn of that pipeline, and their events stay pending as before. Scripts are
queued as bare EVALSHA; a request whose every reply is NOSCRIPT (Redis restarted and lost its
script cache; nothing of it ran) is run again once the scripts are loaded.

A coalescer made with ``wait=(n, timeout_ms)`` ends each pipeline with ``WAIT n timeout_ms`` on
the same connection (same round trip): Redis answers it once ``n`` replicas have every write
of the pipeline. If fewer confirmed in time, every request of it raises
:class:`~engine.core.errors.NotReplicated` (the primary has the writes; they are just not yet
safe from a failover). Intake uses one (``Store.durable``); the turns' coalescer never waits.
A WAIT holds its connection for up to its timeout, so such a coalescer also takes
``max_flushes``: with that many pipelines in flight, new requests queue for the next one
instead of taking more pooled connections (a hung replica must not starve the turns).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from engine.core.errors import NotReplicated

#: Queues commands on the pipeline (may await: scripts queue EVALSHA through a coroutine).
Add = Callable[[Pipeline], Awaitable[object]]


class Coalescer:
    def __init__(
        self,
        redis: aioredis.Redis,
        max_batch: int = 512,
        on_noscript: Callable[[], Awaitable[None]] | None = None,
        wait: tuple[int, int] | None = None,
        max_flushes: int = 0,
    ) -> None:
        self.redis = redis
        #: Pipelines in flight at most (0: no limit); more requests wait for the next one.
        self.max_flushes = max_flushes
        #: (replicas, timeout ms): WAIT at the end of every pipeline (None: no extra command).
        self.wait = wait
        self.max_batch = max_batch
        #: Loads the scripts when Redis answered NOSCRIPT (its script cache was emptied).
        self.on_noscript = on_noscript
        self._queue: list[tuple[Add, asyncio.Future[list[Any]]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, add: Add) -> list[Any]:
        """Queue ``add``'s commands for the next flush; returns their replies, in order."""
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((add, fut))
        if len(self._queue) == 1:
            asyncio.get_running_loop().call_soon(self._start)
        elif len(self._queue) >= self.max_batch:
            self._start()
        return await fut

    def _start(self) -> None:
        if not self._queue or (self.max_flushes and len(self._tasks) >= self.max_flushes):
            return  # a flush that ends starts the next (_done)
        batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
        task = asyncio.create_task(self._flush(batch))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self.max_flushes and self._queue:  # requests held back by the limit
            self._start()

    async def _flush(self, batch: list[tuple[Add, asyncio.Future[list[Any]]]], retried: bool = False) -> None:
        spans: list[tuple[int, int]] = []
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for add, _ in batch:
                    start = len(pipe.command_stack)
                    await add(pipe)
                    spans.append((start, len(pipe.command_stack)))
                if self.wait:
                    pipe.execute_command("WAIT", *self.wait)
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else ConnectionError(str(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        unsafe: Exception | None = None
        if self.wait:
            acked = replies.pop()
            unsafe = acked if isinstance(acked, Exception) else None
            if unsafe is None and int(acked) < self.wait[0]:
                unsafe = NotReplicated(int(acked), self.wait[0])
        again: list[tuple[Add, asyncio.Future[list[Any]]]] = []
        for (add, fut), (a, b) in zip(batch, spans, strict=True):
            if fut.done():  # the turn was cancelled meanwhile
                continue
            mine = replies[a:b]
            if mine and all(isinstance(r, NoScriptError) for r in mine) and not retried and self.on_noscript:
                again.append((add, fut))  # nothing of it ran: safe to run again once loaded
                continue
            failed = next((r for r in mine if isinstance(r, Exception)), unsafe)
            if failed is not None:
                fut.set_exception(failed)
            else:
                fut.set_result(mine)
        if again:
            try:
                assert self.on_noscript is not None
                await self.on_noscript()
            except Exception as exc:
                for _, fut in again:
                    if not fut.done():
                        fut.set_exception(exc)
                return
            await self._flush(again, retried=True)
