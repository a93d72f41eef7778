"""The SMPP bind count is global: two processes (two Runtimes on one Redis) running one
connector against the simulated SMSC never hold more binds there than ``binds`` allows, share
them, and the survivor takes every bind when the other stops."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from engine.app.runtime import Runtime
from engine.core import keys
from engine.core.clock import FakeClock
from engine.core.config import RedisConfig
from engine.core.redis_embedded import free_port
from engine.core.store import Store
from gateways.scripts import install
from gateways.simulators.smsc import BindEvent, SimulatedSmsc, SmscBehaviour
from gateways.smpp.binds import BindLeases
from gateways.smpp.gateway import SmppGateway
from tests.conftest import ROOT, make_config
from tests.test_sender import until


class Counting:
    """The SMSC's binds as it sees them: the most open at once (counted at each bind, when the
    number can only have gone up)."""

    def __init__(self) -> None:
        self.smsc: SimulatedSmsc | None = None
        self.peak = 0

    def on_bind(self, event: BindEvent) -> None:
        assert self.smsc is not None
        if event.status == 0:  # the new bind is not counted by active_binds() yet
            self.peak = max(self.peak, self.smsc.active_binds() + 1)


@pytest.fixture
async def counted() -> AsyncIterator[tuple[SimulatedSmsc, Counting]]:
    count = Counting()
    async with SimulatedSmsc(behaviour=SmscBehaviour(), on_bind=count.on_bind) as smsc:
        count.smsc = smsc
        yield smsc, count


def section(smsc: SimulatedSmsc, binds: int) -> dict[str, Any]:
    return {
        "type": "smpp", "host": "127.0.0.1", "port": smsc.port, "system_id": "parley", "password": "secret",
        "sender": "12345", "binds": binds, "bind_lease": "600ms", "reconnect_delay": "50ms",
        "reconnect_max": "200ms", "response_timeout": "2s",
    }  # fmt: skip


def process(redis_url: str, smsc: SimulatedSmsc, binds: int) -> Runtime:
    """One Parley process running the connector's senders (no HTTP, no worker)."""
    gw = section(smsc, binds)
    return Runtime(make_config(redis_url, gateways={"smsc": gw}), http=False, worker=False, caller=False)


def bound(rt: Runtime) -> int:
    gw = rt.gateways["smsc"]
    assert isinstance(gw, SmppGateway)
    return sum(1 for s in gw.sessions if s.bound.is_set())


async def test_two_processes_share_the_binds_and_the_survivor_takes_them_all(
    redis_url: str, counted: tuple[SimulatedSmsc, Counting]
) -> None:
    smsc, count = counted
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(process(redis_url, smsc, 3))
        await until(lambda: bound(a) == 3)
        async with process(redis_url, smsc, 3) as b:
            # b joins: a hands one bind over (it closes it before b may open it).
            await until(lambda: bound(a) == 2 and bound(b) == 1 and smsc.active_binds() == 3)
            assert count.peak == 3
            ga, gb = a.gateways["smsc"], b.gateways["smsc"]
            assert isinstance(ga, SmppGateway) and isinstance(gb, SmppGateway)
            assert set(ga.health()["bind_leases"]["held"]) | set(gb.health()["bind_leases"]["held"]) == {
                0,
                1,
                2,
            }
            assert await gb.wait_sendable(0)
        # b stopped cleanly (unbound, leases given up): a takes its bind back at its next renewal.
        await until(lambda: bound(a) == 3 and smsc.active_binds() == 3, timeout=5)
        assert count.peak == 3
        leases = await a.store.redis.hgetall(keys.binds("smsc"))
        assert {v.decode().split("|")[0] for k, v in leases.items() if not k.startswith(b"h:")} == {
            a.gateways["smsc"].leases.holder  # type: ignore[attr-defined]
        }
    assert smsc.stats()["binds_ok"] == 5  # 3 by a, 1 by b, then a's third again; none refused


async def test_a_process_holding_no_bind_takes_no_messages(
    redis_url: str, counted: tuple[SimulatedSmsc, Counting]
) -> None:
    smsc, count = counted
    async with process(redis_url, smsc, 1) as a, process(redis_url, smsc, 1) as b:
        await until(lambda: bound(a) + bound(b) == 1)
        busy, idle = (a, b) if bound(a) else (b, a)
        gw = idle.gateways["smsc"]
        assert isinstance(gw, SmppGateway)
        assert not await gw.wait_sendable(0.05) and gw.sessions == []
        # Replies queued in the connector's lane are all sent by the process holding the bind;
        # the other never takes one (it would have no bind to send it on).
        taken_by_idle = 0

        async def watch() -> None:
            nonlocal taken_by_idle
            while True:
                taken_by_idle = max(taken_by_idle, idle.senders["smsc"].in_hand)
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch())
        now = busy.clock.now_ms()
        async with busy.store.redis.pipeline(transaction=False) as pipe:
            for i in range(20):
                contact, mid = f"+4477009{i:05d}", f"m-{i}"
                rec = {"id": mid, "status": "queued", "history": [["queued", now]]}
                shard = keys.shard_of(contact, busy.config.engine.shards)
                pipe.hset(keys.message_records(contact, shard), mid, orjson.dumps(rec))
                pipe.xadd(
                    keys.outbound_stream(shard, "smsc"),
                    {"m": mid, "c": contact, "t": "Thanks!", "r": "", "q": now},
                )
            await pipe.execute()
        await until(lambda: len(smsc.received) == 20 and busy.senders["smsc"].in_hand == 0)
        watcher.cancel()
        assert taken_by_idle == 0
        assert len({sub.bind_id for sub in smsc.received}) == 1 and count.peak == 1


async def test_a_killed_process_binds_are_taken_over_when_its_leases_run_out(
    redis_url: str, counted: tuple[SimulatedSmsc, Counting], tmp_path: Path
) -> None:
    """A real ``parley run`` holding one of two binds is SIGKILLed: the kernel closes its socket,
    its lease runs out (600 ms), and the other process binds that index; never three at once."""
    smsc, count = counted
    config = {
        "redis": {"url": redis_url}, "http": {"port": free_port()}, "api": {"keys": ["k" * 16]},
        "engine": {"flows_dir": str(ROOT / "rules"), "shards": 4}, "log": {"level": "warning"},
        "gateways": {"smsc": section(smsc, 2)},
    }  # fmt: skip
    (tmp_path / "parley.yaml").write_text(yaml.safe_dump(config))
    async with process(redis_url, smsc, 2) as a:
        await until(lambda: bound(a) == 2)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine.app.cli", "--config", str(tmp_path / "parley.yaml"), "run",
            cwd=ROOT, env=env, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            # The new process joins: a hands it one index (closing its bind first).
            await until(lambda: bound(a) == 1 and smsc.active_binds() == 2, timeout=20)
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        await until(lambda: bound(a) == 2 and smsc.active_binds() == 2, timeout=5)
    assert count.peak == 2


async def test_a_process_cut_off_from_redis_closes_its_binds_before_its_leases_can_run_out(
    redis_url: str,
) -> None:
    clock = FakeClock()
    opened: list[int] = []
    closed: list[tuple[int, float]] = []

    async def close(i: int, timeout: float) -> None:
        closed.append((i, timeout))

    store = Store.connect(redis_url, RedisConfig())
    install(store)
    nowhere = Store.connect(f"redis://127.0.0.1:{free_port()}/0", RedisConfig())  # nothing listens
    install(nowhere)
    try:
        leases = BindLeases(store, "smsc", 2, 3.0, opened.append, close, clock)
        await leases.renew()
        assert opened == [0, 1] and leases.holding.is_set()
        leases.store = nowhere
        clock.advance(1.0)  # one renewal missed: 2 s of the lease left, one more try to come
        await leases.renew()
        assert closed == [] and leases.holding.is_set()
        clock.advance(1.0)  # the next try would leave less than a quarter of the lease: fence
        await leases.renew()
        assert [i for i, _ in closed] == [0, 1] and not leases.holding.is_set()
        assert all(t < 1 for _, t in closed)  # closed quickly, not a polite wait
    finally:
        await store.close()
        await nowhere.close()


async def test_against_node_smpp_two_processes_never_hold_more_binds_than_allowed(
    redis_url: str,
) -> None:
    """The same sharing against an SMSC nobody here wrote (node-smpp, tests/peers): it counts its
    own binds; two processes allowed 2 between them never open a third, and the survivor of a
    clean stop holds both."""
    from tests.test_node_smsc import node_smsc

    async with node_smsc() as peer:
        gw = {
            "type": "smpp", "host": "127.0.0.1", "port": peer.port, "system_id": "parley",
            "password": "secret", "sender": "12345", "binds": 2, "bind_lease": "600ms",
            "reconnect_delay": "50ms", "reconnect_max": "200ms", "response_timeout": "2s",
        }  # fmt: skip
        cfg = make_config(redis_url, gateways={"smsc": gw})

        def one() -> Runtime:
            return Runtime(cfg, http=False, worker=False, caller=False)

        async with one() as a:
            await until(lambda: bound(a) == 2)
            async with one() as b:
                await until(lambda: bound(a) == 1 and bound(b) == 1, timeout=5)
                assert (await peer.counts())["binds"] == 2
            await until(lambda: bound(a) == 2, timeout=5)
            seen = await peer.counts()
    assert seen["binds"] == 2 and seen["binds_peak"] == 2  # never a third, as node-smpp counted
