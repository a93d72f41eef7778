"""A master of the cluster dies under load (``kill -9``): its replica is promoted and Parley
carries on with no operator action.

Customers text a flow that echoes every text (``got m7``) at a steady rate through the HTTP
API; replies go out to a simulated carrier. Each customer sends its texts one after another
(the next once the previous was acknowledged with 202; a refused or failed request is sent
again with the same provider id, as a provider does), so every customer's texts have an order.
Midway, the master that serves the most shards is killed. The test then waits for a reply to
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

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
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "cluster") as cluster:
        yield cluster


def _number(i: int) -> str:
    return f"+4477009{i:05d}"


async def test_parley_carries_on_when_a_master_dies_under_load(
    own_cluster: LocalCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "echo.yaml").write_text(ECHO)
    streams = [keys.inbound_stream(s) for s in range(SHARDS)]
    victim = Counter(own_cluster.master_of(s).port for s in streams).most_common(1)[0][0]
    victim_node = next(n for n in own_cluster.nodes if n.port == victim)
    report: dict[str, Any] = {}
    async with SimulatedCarrier() as carrier:
        cfg = make_config(
            ClusterURL(own_cluster.url),
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
                while time.monotonic() - load_started < LOAD_S:
                    body = f"m{i}"
                    await text(number, body, f"{number}-{i}")
                    acked[number].append(body)
                    i += 1
                    await asyncio.sleep(GAP_S)

            async def killer() -> float:
                await asyncio.sleep(KILL_AFTER_S)
                own_cluster.kill(victim_node)
                return time.monotonic()

            killed_at, *_ = await asyncio.gather(killer(), *(customer(n) for n in acked))
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
    report = {
        "acknowledged": sum(len(v) for v in acked.values()),
        "replies_delivered": sum(1 for m in carrier.received if m.text.startswith("got ")),
        "provider_requests": carrier.attempts,
        "killed_master": victim_node.addr,
        "killed_after_s": round(killed_at - load_started, 2),
        "drained_after_kill_s": round(drained_at - killed_at, 2),
        "intake_requests_sent_again": len(failures),
        "intake_failures": dict(Counter(failures)),
        "intake_longest_wait_s": round(max(waits), 2),
        "lost": lost,
        "duplicated": duplicated,
        "reordered": reordered,
    }
    print("failover report:", json.dumps(report, indent=1))  # shown with -s; also in a failure
    assert report["acknowledged"] >= CUSTOMERS * 10, report  # the load went on across the kill
    assert not lost, report
    assert not duplicated, report
    assert not reordered, report
