"""Coalescing: Redis commands issued by concurrent turns in one event-loop pass go out as one
pipeline, so a batch of 256 turns costs two round trips (loads, then commits) instead of 512.

A turn calls ``await coalescer.run(add)``, where ``add(pipe)`` queues that turn's commands on
the shared pipeline; it gets back just its own replies. The first request of a pass schedules
the flush with ``call_soon``, so every turn that becomes ready in the same pass (all loads of a
batch; all commits whose loads came back together) joins it. Each turn still sees its own
errors: a command Redis refused raises in the turn that queued it only; a lost connection
raises in every turn of that pipeline, and their events stay pending as before. Scripts are
queued as bare EVALSHA; a request whose every reply is NOSCRIPT (Redis restarted and lost its
script cache; nothing of it ran) is run again once the scripts are loaded; a request of
scripts only, some of which answered NOSCRIPT (they went to several cluster nodes, one without
the scripts), has those, which did not run, sent again alone (each script stands alone: the
timers' poll, one script per shard). A request mixing plain commands with scripts that
answered NOSCRIPT fails (the plain commands ran without them); its turn is retried.

On a Redis Cluster the pipeline is redis-py's ClusterPipeline: it sends each node its share
of the commands (all on one connection per node, the nodes in parallel) and hands the replies
back in the order they were queued, so a turn still gets exactly its own, in order. It follows
MOVED/ASK per command and retries a node that failed (refreshing the topology: a failover);
when it gives up on a node it raises, and then only the turns with a command there fail (with
that error): the turns whose commands all went to other nodes get their replies. A promoted
replica or a new node answers NOSCRIPT (scripts are not replicated): as above, the scripts
are loaded (on every primary) and the turn runs again.

A coalescer made with ``wait=(n, timeout_ms)`` ends each pipeline with ``WAIT n timeout_ms`` on
the same connection (same round trip): Redis answers it once ``n`` replicas have every write
of the pipeline. If fewer confirmed in time, every request of it raises
:class:`~engine.core.errors.NotReplicated` (the primary has the writes; they are just not yet
safe from a failover). Intake uses one on a single Redis (``Store.durable``; on a cluster,
engine/core/durable.py); the turns' coalescer never waits. A WAIT holds its connection for up
to its timeout, so such a coalescer also takes ``max_flushes``: with that many pipelines in
flight, new requests queue for the next one instead of taking more pooled connections (a hung
replica must not starve the turns).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import redis.cluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import NoScriptError

from engine.core.errors import NotReplicated

#: A ClusterPipeline command's result before its node answered (redis-py 8.2's marker; without
#: it, a failed node fails the whole pipeline's turns, as before).
_UNANSWERED: object = getattr(redis.cluster, "_UNANSWERED", object())

_EVALSHA = ("EVALSHA", b"EVALSHA")

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
        if self._queue and (self.max_flushes or len(self._queue) >= self.max_batch):
            self._start()  # requests held back by the limit

    async def _flush(self, batch: list[tuple[Add, asyncio.Future[list[Any]]]], retried: bool = False) -> None:
        spans: list[tuple[int, int]] = []
        queued: list[Any] | None = None
        stack: list[Any] = []
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for add, _ in batch:
                    start = len(pipe)
                    await add(pipe)
                    spans.append((start, len(pipe)))
                if self.wait:  # single-node only (a cluster's intake waits in durable.py)
                    pipe.execute_command("WAIT", *self.wait)
                queued = _cluster_commands(pipe)
                # What was sent, read only if a script must be sent again (kept: execute
                # replaces the pipeline's list with a new one).
                stack = getattr(pipe, "command_stack", []) if queued is None else queued
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            if queued is None:
                self._fail(batch, exc)
                return
            # A cluster node failed for good: its commands carry no reply (or the error); the
            # other nodes' replies are on their commands.
            replies = [exc if c.result is _UNANSWERED else c.result for c in queued]
        except BaseException as exc:
            self._fail(batch, ConnectionError(str(exc)))
            raise
        unsafe: Exception | None = None
        if self.wait:
            acked = replies.pop()
            unsafe = acked if isinstance(acked, Exception) else None
            if unsafe is None and int(acked) < self.wait[0]:
                unsafe = NotReplicated(int(acked), self.wait[0])
        again: list[tuple[Add, asyncio.Future[list[Any]]]] = []
        #: Requests some of whose scripts answered NOSCRIPT (on a cluster: a node without them).
        partly: list[tuple[asyncio.Future[list[Any]], list[Any], list[int], int]] = []
        for (add, fut), (a, b) in zip(batch, spans, strict=True):
            if fut.done():  # the turn was cancelled meanwhile
                continue
            mine = replies[a:b]
            errors = [r for r in mine if isinstance(r, Exception)]
            if not errors and unsafe is not None:
                fut.set_exception(unsafe)
                continue
            if not errors:
                fut.set_result(mine)
                continue
            failed = next((r for r in errors if not isinstance(r, NoScriptError)), None)
            if failed is None and not retried and self.on_noscript:
                if len(errors) == len(mine):
                    again.append((add, fut))  # nothing of it ran: safe to run again once loaded
                    continue
                if len(stack) >= b and all(_args(stack[i])[0][0].upper() in _EVALSHA for i in range(a, b)):
                    missing = [i for i, r in enumerate(mine) if isinstance(r, NoScriptError)]
                    partly.append((fut, mine, missing, a))  # those did not run: run them alone
                    continue
            fut.set_exception(failed or errors[0])
        if again or partly:
            try:
                assert self.on_noscript is not None
                await self.on_noscript()
            except Exception as exc:
                self._fail(again, exc)
                self._fail([(_never, fut) for fut, *_ in partly], exc)
                return
        if partly:
            await self._rerun(partly, stack)
        if again:
            await self._flush(again, retried=True)

    async def _rerun(
        self,
        partly: list[tuple[asyncio.Future[list[Any]], list[Any], list[int], int]],
        stack: list[Any],
    ) -> None:
        """Send again, alone, the scripts that answered NOSCRIPT (now loaded); each request gets
        its replies with theirs in place."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for _, _, missing, a in partly:
                    for i in missing:
                        args, options = _args(stack[a + i])
                        pipe.execute_command(*args, **options)
                replies = iter(await pipe.execute(raise_on_error=False))
        except Exception as exc:
            self._fail([(_never, fut) for fut, *_ in partly], exc)
            return
        for fut, mine, missing, _ in partly:
            for i in missing:
                mine[i] = next(replies)
            failed = next((r for r in mine if isinstance(r, Exception)), None)
            if fut.done():
                continue
            if failed is not None:
                fut.set_exception(failed)
            else:
                fut.set_result(mine)

    @staticmethod
    def _fail(batch: list[tuple[Add, asyncio.Future[list[Any]]]], exc: Exception) -> None:
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(exc)


async def _never(pipe: Pipeline) -> None:
    """Stands in for a request's ``add`` where only its future is needed."""


def _args(command: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A queued command's arguments and options (a Pipeline's ``(args, options)`` or a
    ClusterPipeline's PipelineCommand), to send it again by itself."""
    if isinstance(command, tuple):
        return command[0], dict(command[1])
    return command.args, dict(command.kwargs)


def _cluster_commands(pipe: Any) -> list[Any] | None:
    """A ClusterPipeline's queued commands (each gets its ``result`` as its node answers), so a
    node's failure can be told apart from the others' replies; None for a single-node pipeline.
    Read before ``execute``, which empties the queue (redis-py 8.2's PipelineStrategy)."""
    if not isinstance(pipe, ClusterPipeline):
        return None
    strategy = getattr(pipe, "_execution_strategy", None)
    queue: list[Any] | None = getattr(strategy, "_command_queue", None)
    if queue is None or not hasattr(redis.cluster, "_UNANSWERED"):
        return None  # another redis-py: a failure then fails every turn of the pipeline
    return queue
