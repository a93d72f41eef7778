"""Real worker processes (``parley run --workers N``): a worker killed with SIGKILL mid-load
loses nothing and sends nothing twice, and the supervisor replaces it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from engine.redis_embedded import free_port
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import API_KEY, ROOT

PROMOTER = "Wonderful, thank you! What do you like most about us?"


class Engine:
    """``parley run`` as a child process, with its HTTP API."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, api: aiohttp.ClientSession) -> None:
        self.proc, self.port, self.api = proc, port, api

    async def health(self) -> dict[str, Any]:
        async with self.api.get("/healthz") as r:
            body: dict[str, Any] = await r.json()
            return body

    async def until_healthy(self, timeout: float = 20) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                body = await self.health()
                if body["status"] == "ok":
                    return body
            except aiohttp.ClientError:
                pass
            if loop.time() > deadline:
                raise AssertionError("engine did not become healthy")
            await asyncio.sleep(0.05)


@pytest.fixture
async def engine(redis_url: str, carrier: SimulatedCarrier, tmp_path: Path) -> AsyncIterator[Engine]:
    port = free_port()
    config = {
        "redis": {"url": redis_url},
        "http": {"port": port},
        "api": {"keys": [API_KEY]},
        "engine": {"flows_dir": str(ROOT / "rules"), "shards": 8, "lease_ttl": "1s", "batch_size": 32},
        "gateways": {"carrier": {"type": "http", "url": carrier.url, "sender": "12345"}},
        "log": {"level": "warning"},
    }
    path = tmp_path / "parley.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.cli", "--config", str(path), "run", "--workers", "2",
        cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with aiohttp.ClientSession(
        f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {API_KEY}"}
    ) as api:
        eng = Engine(proc, port, api)
        try:
            yield eng
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                _, err = await asyncio.wait_for(proc.communicate(), 30)
                assert proc.returncode == 0, err.decode()[-2000:]


async def test_a_worker_killed_mid_load_loses_nothing_and_sends_nothing_twice(
    engine: Engine, carrier: SimulatedCarrier
) -> None:
    health = await engine.until_healthy()
    assert sorted(s for shards in health["workers"].values() for s in shards) == list(range(8))
    numbers = [f"+4477009{i:05d}" for i in range(150)]
    for n in numbers:
        async with engine.api.put(f"/v1/contacts/{n}", json={"fields": {"first_name": "Sam"}}) as r:
            assert r.status in (200, 201)
    async with engine.api.post("/v1/flows/nps/start", json={"contacts": numbers}) as r:
        assert r.status == 202, await r.text()
    for n in numbers:
        assert (await carrier.next_message(n, timeout=20)).text.startswith("Hi Sam")

    # Every customer answers twice, 1 ms apart, while both workers are frozen (a backlog builds
    # up); they are thawed, and one is SIGKILLed while it is working through its share.
    pids = [p["pid"] for p in health["worker_processes"].values()]
    victim = health["worker_processes"]["0"]["pid"]
    url = f"http://127.0.0.1:{engine.port}/v1/inbound/carrier"

    async def answer(n: str) -> None:
        await carrier.text_in(url, API_KEY, n, "10")
        await asyncio.sleep(0.001)
        await carrier.text_in(url, API_KEY, n, "Fast delivery")

    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    await asyncio.gather(*(answer(n) for n in numbers))
    for pid in pids:
        os.kill(pid, signal.SIGCONT)
    first = numbers[0]
    got: dict[str, list[str]] = defaultdict(list)
    got[first].append((await carrier.next_message(first, timeout=20)).text)  # answering has begun
    os.kill(victim, signal.SIGKILL)

    for n in numbers:
        while len(got[n]) < 2:
            got[n].append((await carrier.next_message(n, timeout=30)).text)
    for n in numbers:
        assert got[n][0] == PROMOTER, (n, got[n])
        assert got[n][1].startswith("Thank you Sam! Your 10/10"), (n, got[n])
    await asyncio.sleep(0.5)  # anything sent twice would arrive by now
    assert len(carrier.received) == 3 * len(numbers)
    assert len({m.id for m in carrier.received}) == 3 * len(numbers)

    # The supervisor started a replacement, and the shards are spread over two live workers again.
    # (Restarted after 1 s: until then /healthz shows the dead pid with running: false.)
    for _ in range(100):
        health = await engine.until_healthy()
        if health["worker_processes"]["0"]["pid"] != victim:
            break
        assert health["worker_processes"]["0"]["running"] is False
        await asyncio.sleep(0.05)
    assert health["worker_processes"]["0"]["restarts"] == 1
    assert health["worker_processes"]["0"]["pid"] != victim
    assert health["worker_processes"]["0"]["running"] is True
    for _ in range(100):
        if len(health["workers"]) == 2:
            break
        await asyncio.sleep(0.1)
        health = await engine.health()
    assert sorted(len(s) for s in health["workers"].values()) == [4, 4]


async def test_metrics_add_up_every_worker_process(engine: Engine, carrier: SimulatedCarrier) -> None:
    await engine.until_healthy()
    numbers = [f"+4477008{i:05d}" for i in range(40)]
    for n in numbers:
        async with engine.api.put(f"/v1/contacts/{n}", json={"fields": {"first_name": "Lee"}}) as r:
            assert r.status in (200, 201)
    async with engine.api.post("/v1/flows/nps/start", json={"contacts": numbers}) as r:
        assert r.status == 202
    url = f"http://127.0.0.1:{engine.port}/v1/inbound/carrier"
    for n in numbers:
        await carrier.next_message(n, timeout=20)
        await carrier.text_in(url, API_KEY, n, "10")
    for n in numbers:
        await carrier.next_message(n, timeout=20)
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for _ in range(50):  # a heartbeat renewed late under a loaded CI machine reads as one worker
        async with engine.api.get("/metrics") as r:
            samples = _samples(await r.text())
        if samples.get(("parley_workers_live", ())) == 2:
            break
        await asyncio.sleep(0.1)
    # The contacts are spread over both workers' shards; /metrics on the HTTP process counts
    # the turns of both.
    assert samples[("parley_turns_total", (("flow", "nps"), ("result", "started")))] == 40
    assert samples[("parley_turns_total", (("flow", "nps"), ("result", "replied")))] == 40
    assert samples[("parley_workers_live", ())] == 2
    assert sum(v for (name, _), v in samples.items() if name == "parley_stream_lag") == 0
    stage_counts = {
        dict(labels)["stage"]: v
        for (name, labels), v in samples.items()
        if name == "parley_turn_stage_seconds_count"
    }
    assert stage_counts == {"queue_wait": 80, "load": 80, "decide": 80, "commit": 80}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_parley_run_with_workers_talks_smpp_to_parley_smsc_sim(redis_url: str, tmp_path: Path) -> None:
    """The two commands an operator would start: the SMSC simulator and ``parley run --workers 2``
    with a ``type: smpp`` connector. Only the API/gateway process binds; a customer texts NPS and
    answers through the simulator's control endpoint and gets the flow's replies."""
    smpp_port, control, port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.cli", "smsc-sim", "--port", str(smpp_port), "--control-port", str(control),
        "--system-id", "acme01", "--password", "s3cret", "--dlr-delay", "0.01",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    config = {
        "redis": {"url": redis_url},
        "http": {"port": port},
        "api": {"keys": [API_KEY]},
        "engine": {"flows_dir": str(ROOT / "rules"), "shards": 4},
        "gateways": {"carrier": {"type": "smpp", "host": "127.0.0.1", "port": smpp_port, "system_id": "acme01",
                                 "password": "s3cret", "sender": "12345", "reconnect_delay": "100ms"}},
        "log": {"level": "warning"},
    }  # fmt: skip
    path = tmp_path / "parley.yaml"
    path.write_text(yaml.safe_dump(config))
    run = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.cli", "--config", str(path), "run", "--workers", "2",
        cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{control}") as smsc:

            async def received(n: int) -> list[dict[str, Any]]:
                for _ in range(400):
                    try:
                        async with smsc.get("/received") as r:
                            got: list[dict[str, Any]] = await r.json()
                        if len(got) >= n:
                            return got
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.05)
                raise AssertionError(f"the SMSC did not receive {n} messages")

            async def text(body: str) -> None:
                for _ in range(400):  # until the engine has bound
                    try:
                        async with smsc.post(
                            "/mo", json={"from": "447700900123", "to": "12345", "text": body}
                        ) as r:
                            if r.status == 200:
                                assert (await r.json())["statuses"] == [0]
                                return
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.05)
                raise AssertionError("no bind to deliver to")

            await text("NPS")
            greeting = (await received(1))[0]
            assert greeting["dest"] == "447700900123" and "0 (not at all) to 10" in greeting["text"]
            await text("9")
            assert (await received(2))[1]["text"] == PROMOTER
            async with smsc.get("/stats") as r:
                stats = await r.json()
            assert stats["binds_ok"] == 1  # the worker processes do not bind
    finally:
        for proc in (run, sim):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(run.communicate(), 30)
        out, _ = await asyncio.wait_for(sim.communicate(), 30)
    assert run.returncode == 0, err.decode()[-2000:]
    assert sim.returncode == 0
    assert "bind transceiver as 'acme01': ESME_ROK" in out.decode()
