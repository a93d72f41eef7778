"""A master of the cluster dies under load (``kill -9``): its replica is promoted and Parley
carries on with no operator action. And a shard's slot is moved to another master under load
(resharding: ASK while its keys are half moved, then MOVED).

Customers text a flow that echoes every text (``got m7``) at a steady rate through the HTTP
API; replies go out to a simulated carrier. Each customer sends its texts one after another
(the next once the previous was acknowledged with 202; a refused or failed request is sent
again with the same provider id, as a provider does), so every customer's texts have an order.
Midway, the master that serves the most shards is killed (or the slot moves). The test then waits for a reply to
every acknowledged text and reports, per customer, what was lost (acknowledged, never
answered), duplicated (answered twice on the handset) or reordered, and how the intake fared
(requests that failed and were sent again, the longest wait for a 202). Goal: nothing lost,
no duplicate, order kept.

Bounded: a private cluster (about 2 s to start), 5 s of load, at most 15 s to drain. Its own
cluster, not the session's: one of its masters is killed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.crc import key_slot

from engine.app.runtime import Runtime
from engine.core import keys
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import API_KEY, ClusterURL, make_config
from tests.redis_cluster import LocalCluster

ECHO = """
name: echo
triggers: [echo]
expire_after: 1h
start: hello
nodes:
  hello: {say: "ready", wait: {save: t}, default: echo}
  echo: {say: "got {{ results.t.text }}", wait: {save: t}, default: echo}
"""
CUSTOMERS = 12
#: Seconds between two texts of one customer (12 customers: about 100 texts per second).
GAP_S = 0.12
LOAD_S = 5.0
KILL_AFTER_S = 1.5
SHARDS = 8


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    """A flows directory with the echo flow."""
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "echo.yaml").write_text(ECHO)
    return tmp_path / "flows"


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "cluster") as cluster:
        yield cluster


def _number(i: int) -> str:
    return f"+4477009{i:05d}"


async def echo_under_load(
    url: ClusterURL, flows: Path, event: Callable[[], Awaitable[None]], load_s: float = LOAD_S
) -> dict[str, Any]:
    """Customers text the echo flow (in ``flows``) at a steady rate for ``load_s`` while
    ``event()`` runs (after KILL_AFTER_S); returns the report (see the module docstring)."""
    async with SimulatedCarrier() as carrier:
        cfg = make_config(
            url,
            engine={"flows_dir": str(flows), "shards": SHARDS, "shutdown_timeout": "5s"},
            gateways={"carrier": {"type": "http", "url": carrier.url, "sender": "12345"}},
        )
        async with (
            Runtime(cfg) as rt,
            aiohttp.ClientSession(
                f"http://127.0.0.1:{rt.http_port}", headers={"Authorization": f"Bearer {API_KEY}"}
            ) as api,
        ):
            acked: dict[str, list[str]] = {_number(i): [] for i in range(CUSTOMERS)}
            failures: list[str] = []
            waits: list[float] = []

            async def text(number: str, body: str, pid: str) -> None:
                """Send until acknowledged (the same id each time: the provider's retry)."""
                started = time.monotonic()
                while True:
                    try:
                        async with api.post(
                            "/v1/inbound/carrier",
                            json={"from": number, "to": "12345", "text": body, "id": pid},
                            timeout=aiohttp.ClientTimeout(total=20),
                        ) as r:
                            if r.status in (200, 202):
                                waits.append(time.monotonic() - started)
                                return
                            failures.append(f"{r.status}")
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        failures.append(type(exc).__name__)
                    await asyncio.sleep(0.1)

            for number in acked:
                await text(number, "echo", f"start-{number}")
            for number in acked:
                assert (await carrier.next_message(number, timeout=10)).text == "ready"

            load_started = time.monotonic()

            async def customer(number: str) -> None:
                i = 0
                while time.monotonic() - load_started < load_s:
                    body = f"m{i}"
                    await text(number, body, f"{number}-{i}")
                    acked[number].append(body)
                    i += 1
                    await asyncio.sleep(GAP_S)

            async def at_its_time() -> float:
                await asyncio.sleep(KILL_AFTER_S)
                await event()
                return time.monotonic()

            event_at, *_ = await asyncio.gather(at_its_time(), *(customer(n) for n in acked))
            # Drain: a reply for every acknowledged text (bounded).
            expected = sum(len(v) for v in acked.values())
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                got = [m for m in carrier.received if m.text.startswith("got ")]
                if len({(m.to, m.text) for m in got}) >= expected:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # a late duplicate would show up now
            drained_at = time.monotonic()

    lost: dict[str, list[str]] = {}
    duplicated: dict[str, list[str]] = {}
    reordered: dict[str, list[str]] = {}
    for number, sent in acked.items():
        replies = [
            m.text.removeprefix("got ") for m in carrier.received if m.to == number and m.text != "ready"
        ]
        if missing := [t for t in sent if t not in replies]:
            lost[number] = missing
        if twice := sorted(t for t, n in Counter(replies).items() if n > 1):
            duplicated[number] = twice
        firsts = list(dict.fromkeys(replies))
        if firsts != [t for t in sent if t in firsts]:
            reordered[number] = firsts
    return {
        "acknowledged": sum(len(v) for v in acked.values()),
        "replies_delivered": sum(1 for m in carrier.received if m.text.startswith("got ")),
        "provider_requests": carrier.attempts,
        "event_after_s": round(event_at - load_started, 2),
        "drained_after_event_s": round(drained_at - event_at, 2),
        "intake_requests_sent_again": len(failures),
        "intake_failures": dict(Counter(failures)),
        "intake_longest_wait_s": round(max(waits), 2),
        "lost": lost,
        "duplicated": duplicated,
        "reordered": reordered,
    }


def _check(report: dict[str, Any], what: str) -> None:
    print(f"{what} report:", json.dumps(report, indent=1))  # shown with -s; also in a failure
    assert report["acknowledged"] >= CUSTOMERS * 10, report  # the load went on across the event
    assert not report["lost"], report
    assert not report["duplicated"], report
    assert not report["reordered"], report


async def test_parley_carries_on_when_a_master_dies_under_load(
    own_cluster: LocalCluster, flows: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    streams = [keys.inbound_stream(s) for s in range(SHARDS)]
    victim = Counter(own_cluster.master_of(s).port for s in streams).most_common(1)[0][0]
    victim_node = next(n for n in own_cluster.nodes if n.port == victim)

    async def kill() -> None:
        own_cluster.kill(victim_node)

    report = await echo_under_load(ClusterURL(own_cluster.url), flows, kill)
    report["killed_master"] = victim_node.addr
    _check(report, "failover")


async def test_a_shard_moved_to_another_master_under_load_loses_and_repeats_nothing(
    cluster_url: ClusterURL, redis_cluster: LocalCluster, flows: Path
) -> None:
    """A shard's slot is resharded to another master while its customers text (the session's
    cluster: nothing is killed). While its keys are half moved clients get ASK, then MOVED."""
    shard = keys.shard_of(_number(0), SHARDS)
    slot = key_slot(keys.inbound_stream(shard).encode())
    source = redis_cluster.master_of_slot(slot)
    target = next(n for n in redis_cluster.primaries() if n is not source)

    async def reshard() -> None:
        await asyncio.to_thread(redis_cluster.move_slot, slot, target, between=lambda: time.sleep(0.3))

    try:
        report = await echo_under_load(cluster_url, flows, reshard, load_s=3.0)
        report["moved_slot"] = f"{slot}: {source.addr} -> {target.addr}"
        assert redis_cluster.master_of_slot(slot) is target
    finally:  # the session's cluster as the other tests know it
        await asyncio.to_thread(redis_cluster.move_slot, slot, source)
    _check(report, "reshard")
