"""Property: however texts, timers and worker crashes interleave, every inbound text is answered
exactly once, in order per contact, and the conversations end in the same state as when one
worker processes everything one event at a time.

Each example is run twice on the real Redis: once by a reference that runs every event in stream
order with no worker at all, once by real :class:`~engine.conversation.worker.Worker` instances that are killed
at chosen points (right after the k-th committed turn, before the batch is acknowledged; other
contacts' turns in the batch are cut off wherever they are). A killed worker's leases are
expired, and a new worker takes the shards over, claiming what the dead one left pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.app.runtime import Runtime
from engine.conversation import intake, sessions
from engine.conversation.events import Event
from engine.conversation.turn import TurnDone, run_turn
from engine.conversation.worker import Worker, fire_timers
from engine.core import contacts, keys
from engine.core.clock import FakeClock
from tests.conftest import ROOT, make_config, outbound, shard

NUMBERS = ["+447700900101", "+447700900202", "+447700900303"]
TEXTS = ["nps", "csat", "10", "3", "7", "five", "great service", "hello", "STOP"]
#: Clock moves that cross the flows' reply timeout (csat: 1 day) and expiry (2 and 3 days).
TICKS = [600, 4 * 3600, 86400 + 60, 3 * 86400]

text = st.tuples(st.integers(0, len(NUMBERS) - 1), st.sampled_from(TEXTS), st.booleans())
crash = st.one_of(st.none(), st.integers(0, 6))
op = st.one_of(
    st.tuples(st.just("texts"), st.lists(text, min_size=1, max_size=5), crash),
    st.tuples(st.just("tick"), st.sampled_from(TICKS), crash),
)


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The shipped flows these texts start, alone: every example starts two engines, and
    loading every shipped flow each time would cost more than the turns."""
    out = tmp_path_factory.mktemp("flows")
    for name in ("nps", "csat"):
        shutil.copy(ROOT / "rules" / f"{name}.yaml", out / f"{name}.yaml")
    return str(out)


class Outcome:
    def __init__(self, replies: dict[str, list[str]], states: dict[str, Any], ids: list[str]) -> None:
        self.replies, self.states, self.ids = replies, states, ids


async def _setup(url: str, flows: str) -> Runtime:
    r = aioredis.Redis.from_url(url)
    await r.flushdb()
    await r.aclose()
    cfg = make_config(
        url, engine={"flows_dir": flows}, gateways={"carrier": {"type": "http", "url": "http://127.0.0.1:9/"}}
    )
    rt = Runtime(cfg, clock=FakeClock(), worker=False, senders=False, http=False)
    await rt.__aenter__()
    for n in NUMBERS:
        await contacts.upsert(
            rt.store, rt.config.engine.shards, contacts.Contact(n, {"first_name": "Kim"}), rt.clock.now_ms()
        )
    return rt


async def _apply(rt: Runtime, step: tuple[Any, ...], ids: itertools.count[int]) -> None:
    kind, arg, _ = step
    if kind == "tick":
        assert isinstance(rt.clock, FakeClock)
        rt.clock.advance(arg)
        await fire_timers(rt)
        return
    last: str | None = None
    for who, body, resend in arg:
        pid = last if resend and last else f"mo-{next(ids)}"  # a resend is the provider retrying
        last = pid
        await intake.accept_inbound(
            rt, gateway="carrier", contact=NUMBERS[who], to="12345", text=body, provider_id=pid
        )


async def _outcome(rt: Runtime) -> Outcome:
    r = rt.store.redis
    replies: dict[str, list[str]] = {n: [] for n in NUMBERS}
    ids = []
    for fields in await outbound(rt, "carrier"):
        replies[fields[b"c"].decode()].append(fields[b"t"].decode())
        ids.append(fields[b"m"].decode())
    states = {}
    for n in NUMBERS:
        states[n] = sessions.state_of(await r.get(keys.session(n, shard(n)))) or None
    return Outcome(replies, states, ids)


async def _reference(url: str, flows: str, steps: list[tuple[Any, ...]]) -> Outcome:
    rt = await _setup(url, flows)
    try:
        ids = itertools.count()
        for step in steps:
            await _apply(rt, step, ids)
            for shard in range(rt.config.engine.shards):
                stream = keys.inbound_stream(shard)
                for entry_id, fields in await rt.store.redis.xrange(stream):
                    await run_turn(rt, Event.from_entry(shard, entry_id, fields))
                    await rt.store.redis.xdel(stream, entry_id)
        return await _outcome(rt)
    finally:
        await rt.__aexit__(None, None, None)


class Crashy:
    """Real workers, one at a time; ``arm(k)`` kills the current one after its k-th turn."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.worker: Worker | None = None
        self.index = 0
        self.crashes = 0
        self._left: int | None = None

    def arm(self, k: int | None) -> None:
        self._left = k

    def _after_turn(self, done: TurnDone) -> None:
        if self._left is None:
            return
        if self._left == 0 and self.worker is not None and self.worker._task is not None:
            self._left = None
            self.worker._task.cancel()  # dies here: committed, not acknowledged
        elif self._left:
            self._left -= 1

    async def start(self) -> None:
        self.index += 1
        w = Worker(self.rt, self.index)
        w.listeners.append(self._after_turn)
        await w.__aenter__()
        self.worker = w

    async def _bury(self) -> None:
        """The dead worker's process is gone: its tasks stop, its leases run out."""
        w = self.worker
        assert w is not None
        for task in (w._task, w._lease_task, w._watch_task, w._timer_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        r = self.rt.store.redis
        for s, value in (await r.hgetall(keys.leases("worker"))).items():
            if value.decode().startswith(w.me + "|"):
                await r.hdel(keys.leases("worker"), s)
        await r.zrem(keys.live("worker"), w.me)
        self.crashes += 1
        await self.start()

    async def drain(self) -> None:
        r = self.rt.store.redis
        streams = [keys.inbound_stream(s) for s in range(self.rt.config.engine.shards)]
        for _ in range(4000):
            assert self.worker is not None and self.worker._task is not None
            if self.worker._task.done():
                await self._bury()
                continue
            async with r.pipeline(transaction=False) as pipe:
                for s in streams:
                    pipe.xlen(s)
                if not any(await pipe.execute()):
                    return
            await asyncio.sleep(0.002)
        raise AssertionError("the workers did not drain the streams")


async def _crashy(url: str, flows: str, steps: list[tuple[Any, ...]]) -> tuple[Outcome, int]:
    rt = await _setup(url, flows)
    crashy = Crashy(rt)
    try:
        await crashy.start()
        ids = itertools.count()
        for step in steps:
            crashy.arm(step[2])
            await _apply(rt, step, ids)
            await crashy.drain()
            crashy.arm(None)
        return await _outcome(rt), crashy.crashes
    finally:
        if crashy.worker is not None:
            await crashy.worker.__aexit__(None, None, None)
        await rt.__aexit__(None, None, None)


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(op, min_size=1, max_size=6))
def test_crashes_never_lose_reorder_or_repeat_a_reply(
    redis_server: str, flows: str, steps: list[tuple[Any, ...]]
) -> None:
    expected = asyncio.run(_reference(redis_server, flows, steps))
    got, _crashes = asyncio.run(_crashy(redis_server, flows, steps))
    assert len(got.ids) == len(set(got.ids)), "a reply was queued twice"
    for n in NUMBERS:
        assert got.replies[n] == expected.replies[n], n
        assert got.states[n] == expected.states[n], n


def test_the_property_does_kill_workers_mid_batch(redis_server: str, flows: str) -> None:
    """Guard for the test above: a crash after the first turn of a burst really leaves work for
    the next worker (otherwise the property would pass without testing recovery)."""
    burst = [(i % 3, t, False) for i, t in enumerate(["nps", "nps", "nps", "10", "10", "10"])]
    got, crashes = asyncio.run(_crashy(redis_server, flows, [("texts", burst, 0)]))
    expected = asyncio.run(_reference(redis_server, flows, [("texts", burst, None)]))
    assert crashes == 1
    assert got.replies == expected.replies
    assert sum(len(v) for v in got.replies.values()) == 6
