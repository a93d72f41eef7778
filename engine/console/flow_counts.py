"""The numbers the Flows page draws on a flow's graph: contacts waiting at each node now, and
runs that dropped off at each node (the flow's report). Both are read when someone looks, never
kept up on the turn's path, and each read is bounded and shared.

**Waiting now.** A session records its node only in its own string (``p:s:TN``, the state's
``n``); nothing counts sessions by node, and keeping such a count would cost every turn a write.
Instead the page reads it: every open conversation has exactly one expiry timer (``N|x|st``) in
its shard's timer set, so the timer sets list the open conversations without a SCAN of the
keyspace; their sessions are read in pipelined batches of :data:`BATCH` (one slot per shard,
so this works on a Cluster too), and the (flow, node) of each waiting one is counted. At most
:data:`MAX_SESSIONS` sessions are read (a few hundred milliseconds of Redis time, off the
turn's path); past that the counts are a sample and the page says so. One read serves every
flow and every viewer for :data:`WAITING_TTL_S` (concurrent viewers wait for the same read).

**Drop-off.** The flow's report (engine/crm/reports.py, as ``GET /v1/flows/{flow}/report``
makes it: one pass over the outcome streams), kept per flow for :data:`REPORT_TTL_S`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ResponseError

from engine.conversation import sessions
from engine.core import keys
from engine.core.clock import Clock
from engine.core.store import Store
from engine.crm import reports

MAX_SESSIONS = 50_000
BATCH = 500
WAITING_TTL_S = 15.0
REPORT_TTL_S = 60.0


@dataclass
class Waiting:
    #: flow -> node -> contacts waiting there
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    #: Sessions read; ``complete`` is False when the read stopped at its bound (a sample).
    read: int = 0
    complete: bool = True

    def of(self, flow: str) -> Counter[str]:
        return self.counts.get(flow, Counter())


async def read_waiting(store: Store, shards: int, limit: int = MAX_SESSIONS) -> Waiting:
    """Count the open conversations by (flow, node), reading at most ``limit`` sessions."""
    out = Waiting()
    for shard in range(shards):
        numbers: list[str] = []
        async for member, _ in store.redis.zscan_iter(keys.timers(shard), match="*|x|*", count=1000):
            text = member.decode() if isinstance(member, bytes) else member
            number, kind, _ = text.split("|", 2)
            if kind != "x":  # "*|x|*" also matches a deferred start whose token holds "|x|"
                continue
            numbers.append(number)
            if out.read + len(numbers) >= limit:
                out.complete = False
                break
            if len(numbers) >= BATCH:
                await _count(store, shard, numbers, out)
                numbers = []
        await _count(store, shard, numbers, out)
        if not out.complete:
            break
    return out


async def _count(store: Store, shard: int, numbers: list[str], out: Waiting) -> None:
    if not numbers:
        return
    async with store.redis.pipeline(transaction=False) as pipe:
        for n in numbers:
            pipe.get(keys.session(n, shard))
        raws = await pipe.execute(raise_on_error=False)
    out.read += len(numbers)
    for raw in raws:
        if isinstance(raw, ResponseError) or not raw:  # an older build's hash session: not counted
            continue
        state = sessions.state_of(raw)
        if state.get("n") is not None and state.get("f"):
            out.counts.setdefault(state["f"], Counter())[state["n"]] += 1


class FlowCounts:
    """The cached reads, one per console (a process's console app owns one)."""

    def __init__(self, store: Store, shards: int, clock: Clock) -> None:
        self.store, self.shards, self.clock = store, shards, clock
        self._waiting: tuple[float, Waiting] | None = None
        self._waiting_lock = asyncio.Lock()
        self._reports: dict[str, tuple[float, dict[str, Any]]] = {}
        self._report_locks: dict[str, asyncio.Lock] = {}

    async def waiting(self) -> Waiting:
        async with self._waiting_lock:
            now = self.clock.monotonic()
            if self._waiting is None or now - self._waiting[0] > WAITING_TTL_S:
                self._waiting = (now, await read_waiting(self.store, self.shards))
            return self._waiting[1]

    async def report(self, flow: str) -> dict[str, Any]:
        """The flow's report, as ``GET /v1/flows/{flow}/report`` answers, at most a minute old."""
        lock = self._report_locks.setdefault(flow, asyncio.Lock())
        async with lock:
            now = self.clock.monotonic()
            held = self._reports.get(flow)
            if held is None or now - held[0] > REPORT_TTL_S:
                held = (now, reports.report(flow, await reports.fold(self.store, self.shards, flow)))
                self._reports[flow] = held
            return held[1]

    async def dropped(self, flow: str) -> dict[str, int]:
        """Runs that ended without completing, by the node they stopped at."""
        return {row["node"]: row["runs"] for row in (await self.report(flow))["drop_off"]}
