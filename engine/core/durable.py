"""``Store.durable`` on a Redis Cluster: writes acknowledged only once N replicas of their
master have them (``redis.wait_replicas``).

WAIT covers the writes of its own connection only, and a cluster client sends a keyless WAIT
to every master on connections that wrote nothing (and sums the replies), which would always
say "enough". So here each request's commands (one slot: an intake call's keys share its
shard's hash tag) are queued on a scratch pipeline to read them, sent to the master that owns
that slot, and followed by WAIT on the same connection, in the same round trip. Requests of one
event-loop pass that go to the same master share its pipeline and its WAIT, as the
single-node coalescer does (batching.py). A master whose replicas do not confirm in time fails
only its own requests with :class:`~engine.core.errors.NotReplicated`; a MOVED or ASK reply
(the slot is moving) fails the request as retryable and refreshes the slot map, so the peer's
retry goes to the right master.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.exceptions import AskError, MovedError, NoScriptError, TryAgainError

from engine.core.batching import Add
from engine.core.errors import NotReplicated

_Request = tuple[list[tuple[Any, ...]], "asyncio.Future[list[Any]]"]


class ClusterDurable:
    """``await durable.run(add)`` as with a Coalescer; ``add`` queues one slot's commands."""

    def __init__(
        self,
        cluster: RedisCluster,
        wait: tuple[int, int],
        on_noscript: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.cluster = cluster
        self.wait = wait
        self.on_noscript = on_noscript
        #: Never connected: its pipelines only record what ``add`` queues.
        self._scratch = aioredis.Redis()
        self._queue: dict[str, tuple[ClusterNode, list[_Request]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, add: Add) -> list[Any]:
        scratch = self._scratch.pipeline(transaction=False)
        await add(scratch)
        commands = [tuple(args) for args, _ in scratch.command_stack]
        if not commands:
            return []
        if not self.cluster.nodes_manager.slots_cache:
            await self.cluster.initialize()
        name, *rest = commands[0]
        slot = await self.cluster._determine_slot(str(name), *rest)
        node = self.cluster.nodes_manager.get_node_from_slot(slot)
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        if not self._queue:
            asyncio.get_running_loop().call_soon(self._start)
        self._queue.setdefault(node.name, (node, []))[1].append((commands, fut))
        return await fut

    def _start(self) -> None:
        batches, self._queue = self._queue, {}
        for node, requests in batches.values():
            task = asyncio.create_task(self._flush(node, requests))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, node: ClusterNode, requests: list[_Request], retried: bool = False) -> None:
        stack = [PipelineCommand(i, *args) for i, args in enumerate(a for cmds, _ in requests for a in cmds)]
        stack.append(PipelineCommand(len(stack), "WAIT", *self.wait))
        try:
            await node.execute_pipeline(stack)
        except Exception as exc:
            for _, fut in requests:
                if not fut.done():
                    fut.set_exception(exc)
            return
        acked: Any = stack[-1].result
        unsafe: Exception | None = acked if isinstance(acked, Exception) else None
        if unsafe is None and int(acked) < self.wait[0]:
            unsafe = NotReplicated(int(acked), self.wait[0])
        again: list[_Request] = []
        moved = False
        at = 0
        for cmds, fut in requests:
            mine = [c.result for c in stack[at : at + len(cmds)]]
            at += len(cmds)
            if fut.done():
                continue
            if all(isinstance(r, NoScriptError) for r in mine) and not retried and self.on_noscript:
                again.append((cmds, fut))  # nothing of it ran
                continue
            failed = next((r for r in mine if isinstance(r, Exception)), unsafe)
            moved = moved or isinstance(failed, MovedError | AskError | TryAgainError)
            if failed is not None:
                fut.set_exception(failed)
            else:
                fut.set_result(mine)
        if moved:  # the slot map changed: the retry must find the new owner
            await self.cluster.nodes_manager.initialize()
        if again:
            try:
                assert self.on_noscript is not None
                await self.on_noscript()
            except Exception as exc:
                for _, fut in again:
                    if not fut.done():
                        fut.set_exception(exc)
                return
            await self._flush(node, again, retried=True)

    async def aclose(self) -> None:
        await self._scratch.aclose()
