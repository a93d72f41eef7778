"""Real worker processes (``parley run --workers N``): a worker killed with SIGKILL mid-load
loses nothing and sends nothing twice, and the supervisor replaces it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from engine.app.supervisor import RESTART_READY_S
from engine.core.redis_embedded import free_port
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import API_KEY, ROOT, redis_section

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


def engine_config(redis_url: str, carrier: SimulatedCarrier, port: int, **engine: Any) -> dict[str, Any]:
    return {
        "redis": redis_section(redis_url),
        "http": {"port": port},
        "api": {"keys": [API_KEY]},
        "engine": {"flows_dir": str(ROOT / "rules"), "shards": 8, **engine},
        "gateways": {"carrier": {"type": "http", "url": carrier.url, "sender": "12345"}},
        "log": {"level": "warning"},
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.asynccontextmanager
async def parley_run(config: dict[str, Any], path: Path) -> AsyncIterator[Engine]:
    """``parley run --workers 2`` with ``config`` (written to ``path``); stopped with SIGTERM,
    and it must exit 0."""
    write_config(path, config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.app.cli", "--config", str(path), "run", "--workers", "2",
        cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    port = config["http"]["port"]
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


@pytest.fixture
async def engine(redis_url: str, carrier: SimulatedCarrier, tmp_path: Path) -> AsyncIterator[Engine]:
    config = engine_config(redis_url, carrier, free_port(), lease_ttl="1s", batch_size=32)
    async with parley_run(config, tmp_path / "parley.yaml") as eng:
        yield eng


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
    # (Restarted at once, but until the supervisor has reaped it /healthz shows the dead pid with
    # running: false.)
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


async def test_senders_run_in_the_worker_processes_and_a_killed_ones_lanes_move_at_once(
    redis_url: str, carrier: SimulatedCarrier, tmp_path: Path
) -> None:
    """With ``--workers 2`` the send pipeline runs in the worker processes (the HTTP process
    sends nothing); a worker SIGKILLed gives up its lanes with its shards when its supervisor
    sees it die, long before its leases (30 s here) would run out, and nothing is lost."""
    config = engine_config(redis_url, carrier, free_port(), lease_ttl="30s", batch_size=32)
    async with parley_run(config, tmp_path / "parley.yaml") as engine:
        health = await engine.until_healthy()
        for _ in range(100):  # both workers' senders hold their share
            if len(health["senders"]["carrier"]) == 2:
                break
            await asyncio.sleep(0.05)
            health = await engine.until_healthy()
        holders = health["senders"]["carrier"]
        workers = {p["pid"] for p in health["worker_processes"].values()}
        assert health["pid"] not in workers
        assert sorted(s for shards in holders.values() for s in shards) == list(range(8))
        # Each holder is a worker process, named after it: "<host>-<pid>-w<index>-s".
        assert {int(who.rsplit("-", 3)[1]) for who in holders} == workers
        assert all(who.endswith(("-w0-s", "-w1-s")) for who in holders)

        numbers = [f"+4477007{i:05d}" for i in range(40)]
        for n in numbers:
            async with engine.api.put(f"/v1/contacts/{n}", json={"fields": {"first_name": "Ana"}}) as r:
                assert r.status in (200, 201)
        async with engine.api.post("/v1/flows/nps/start", json={"contacts": numbers}) as r:
            assert r.status == 202
        for n in numbers:
            await carrier.next_message(n, timeout=20)

        victim = health["worker_processes"]["0"]["pid"]
        os.kill(victim, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        killed = loop.time()
        while True:  # every shard's lanes read by the survivor, well inside the 30 s lease
            health = await engine.health()
            if set(health["senders"].get("carrier", {})) and all(
                int(who.rsplit("-", 3)[1]) != victim for who in health["senders"]["carrier"]
            ):
                covered = sorted(s for shards in health["senders"]["carrier"].values() for s in shards)
                if covered == list(range(8)):
                    break
            assert loop.time() - killed < 15, health["senders"]
            await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{engine.port}/v1/inbound/carrier"
        for n in numbers:
            await carrier.text_in(url, API_KEY, n, "10")
        for n in numbers:
            assert (await carrier.next_message(n, timeout=20)).text == PROMOTER
        assert len(carrier.received) == 2 * len(numbers)


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
    started = ("parley_turns_total", (("flow", "nps"), ("result", "started")))
    replied = ("parley_turns_total", (("flow", "nps"), ("result", "replied")))
    for _ in range(50):
        # A heartbeat renewed late under a loaded CI machine reads as one worker, and a worker
        # writes what it counted to the shared values at most metrics.FLUSH_S later.
        async with engine.api.get("/metrics") as r:
            samples = _samples(await r.text())
        stages = [v for (name, _), v in samples.items() if name == "parley_turn_stage_seconds_count"]
        # A scrape may also fall between a worker writing its counters and its histograms.
        if (
            samples.get(("parley_workers_live", ())) == 2
            and samples.get(started) == samples.get(replied) == 40
            and stages == [80] * 4
        ):
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
    with a ``type: smpp`` connector. One worker process binds (the senders run in the workers);
    a customer texts NPS and
    answers through the simulator's control endpoint and gets the flow's replies."""
    smpp_port, control, port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.app.cli", "smsc-sim", "--port", str(smpp_port), "--control-port", str(control),
        "--system-id", "acme01", "--password", "s3cret", "--dlr-delay", "0.01",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    config = {
        "redis": redis_section(redis_url),
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
        sys.executable, "-m", "engine.app.cli", "--config", str(path), "run", "--workers", "2",
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
            assert stats["binds_ok"] == 1  # one bind in all (binds: 1), whichever worker holds its lease
    finally:
        for proc in (run, sim):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(run.communicate(), 30)
        out, _ = await asyncio.wait_for(sim.communicate(), 30)
    assert run.returncode == 0, err.decode()[-2000:]
    assert sim.returncode == 0
    assert "bind transceiver as 'acme01': ESME_ROK" in out.decode()


# Workers killed again and again ---------------------------------------------------------------


@dataclass
class KillRun:
    """What a run of :func:`kill_workers_under_load` saw."""

    texts: int = 0
    latencies: list[float] = field(default_factory=list)  # text sent -> its reply at the handset
    lost: int = 0  # texts never answered
    twice: int = 0  # texts answered more than once
    kills: int = 0
    #: (worker index, pid) -> the wait before the supervisor started it (from /healthz)
    waits: dict[tuple[str, int], float] = field(default_factory=dict)
    #: pids killed after they had reported ready
    killed_ready: set[int] = field(default_factory=set)
    samples: int = 0
    samples_without_reader: int = 0  # /healthz samples with a shard no live worker held

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    def summary(self) -> str:
        return (
            f"{self.texts} texts, {self.kills} kills: reply p50 {self.percentile(0.5):.2f}s "
            f"p99 {self.percentile(0.99):.2f}s max {max(self.latencies, default=0):.2f}s; "
            f"lost {self.lost}, twice {self.twice}; {self.samples_without_reader} of {self.samples} "
            f"samples with unread shards"
        )


async def kill_workers_under_load(
    engine: Engine,
    carrier: SimulatedCarrier,
    *,
    rate: float,
    seconds: float,
    every: float,
    spare_last: bool = True,
    prefix: str = "+4477",
) -> KillRun:
    """Text Parley ``rate`` times a second for ``seconds`` (each text from a new customer, "NPS":
    one reply each), SIGKILLing one ready worker every ``every`` seconds meanwhile, as the
    out-of-memory killer might; then wait for the replies. Latencies are from each text's
    scheduled time, so a stall shows however the load generator fares.

    ``spare_last``: kill only while another worker is ready too. Killing faster than a worker
    can start leaves no worker at all for a start-up time (2-5 s on a loaded 2-core machine)
    whatever the supervisor does; what it controls, and what a test can hold it to, is the
    restart wait and how fast the shards are read again."""
    run = KillRun()
    url = f"http://127.0.0.1:{engine.port}/v1/inbound/carrier"
    loop = asyncio.get_running_loop()
    total = int(rate * seconds)
    numbers = [f"{prefix}{i:07d}" for i in range(total)]
    scheduled: dict[str, float] = {}
    done = asyncio.Event()

    async def one(n: str, at: float) -> None:
        scheduled[n] = at
        await carrier.text_in(url, API_KEY, n, "NPS")

    async def load() -> None:
        start = time.perf_counter()
        texts: list[asyncio.Task[None]] = []
        for i, n in enumerate(numbers):
            at = start + i / rate
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            texts.append(asyncio.create_task(one(n, at)))
        await asyncio.gather(*texts)
        done.set()

    async def watch_and_kill() -> None:
        last = ""
        next_kill = loop.time() + every
        while not done.is_set():
            health = await engine.health()
            run.samples += 1
            run.samples_without_reader += bool(health["unread_shards"])
            procs = health["worker_processes"]
            for i, p in procs.items():
                run.waits[(i, p["pid"])] = p["restart_wait"]
            if loop.time() >= next_kill:
                ready = [i for i, p in procs.items() if p["running"] and p["ready"]]
                if len(ready) > (1 if spare_last else 0):
                    # The other worker than last time when it can, so both keep being killed.
                    victim = next((i for i in ready if i != last), ready[0])
                    pid = procs[victim]["pid"]
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        run.kills += 1
                        run.killed_ready.add(pid)
                    last = victim
                    next_kill += every
            await asyncio.sleep(0.25)

    await asyncio.gather(load(), watch_and_kill())
    run.texts = total
    replies: dict[str, list[float]] = defaultdict(list)
    deadline = loop.time() + 60
    while loop.time() < deadline:
        replies.clear()
        for m in carrier.received:
            replies[m.to].append(m.at)
        if all(n in replies for n in numbers):
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # anything sent twice would arrive by now
    replies.clear()
    for m in carrier.received:
        replies[m.to].append(m.at)
    for n in numbers:
        got = replies.get(n, [])
        run.lost += not got
        run.twice += len(got) > 1
        if got:
            run.latencies.append(min(got) - scheduled[n])
    return run


async def test_workers_killed_every_two_seconds_keep_answering_within_seconds(
    redis_url: str, carrier: SimulatedCarrier, tmp_path: Path
) -> None:
    """The issue's fault: SIGKILL a worker every 2 s under a steady load. Before, a worker killed
    within 60 s of its start counted as a start-up crash and was restarted after 1, 2, 4 ... 30
    s, and its shards waited for its lease to run out (5 s, the default here): reply p50 6.4 s,
    p99 15.5 s in this test. Now it is restarted at once and its shards are read again within
    milliseconds."""
    config = engine_config(redis_url, carrier, free_port(), batch_size=32)
    async with parley_run(config, tmp_path / "parley.yaml") as eng:
        await eng.until_healthy()
        run = await kill_workers_under_load(eng, carrier, rate=100, seconds=14, every=2.0)
        print(run.summary())
        assert run.kills >= 3, run.summary()
        assert run.lost == 0 and run.twice == 0, run.summary()
        assert run.percentile(0.99) < 5.0, run.summary()
        assert max(run.latencies) < 10.0, run.summary()
        # No wait grew: every worker killed after it was ready was started again at once.
        assert set(run.waits.values()) == {RESTART_READY_S}, run.waits


async def test_a_worker_that_cannot_start_is_restarted_with_growing_waits(
    redis_url: str, carrier: SimulatedCarrier, tmp_path: Path
) -> None:
    """An operator breaks the configuration file while Parley runs: the running processes carry
    on, but a worker started now reads it and exits (status 2) before it is ready. It is tried
    again after 1, 2, 4 s, not in a hot loop; the other worker reads every shard meanwhile; a
    good file brings it back."""
    path = tmp_path / "parley.yaml"
    config = engine_config(redis_url, carrier, free_port(), batch_size=32)
    async with parley_run(config, path) as eng:
        await eng.until_healthy()
        health = await _until(eng, lambda h: all(p["ready"] for p in h["worker_processes"].values()), 20)
        broken = engine_config(redis_url, carrier, config["http"]["port"], batch_size=32, lease_ttl="1ms")
        write_config(path, broken)
        os.kill(health["worker_processes"]["0"]["pid"], signal.SIGKILL)
        seen: list[tuple[int, float]] = []  # (restarts, the wait before the next start)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(seen) < 4 and loop.time() < deadline:
            health = await eng.health()
            w0 = health["worker_processes"]["0"]
            if w0["restarts"] and (not seen or seen[-1][0] != w0["restarts"]):
                seen.append((w0["restarts"], w0["restart_wait"]))
            if len(seen) > 1:  # the kill's restart failed: the other worker holds every shard
                assert not health["unread_shards"], health
            await asyncio.sleep(0.05)
        assert seen == [(1, 0.0), (2, 1.0), (3, 2.0), (4, 4.0)], seen
        write_config(path, config)
        health = await eng.until_healthy()
        await _until(eng, lambda h: h["worker_processes"]["0"]["ready"], timeout=20)


async def _until(eng: Engine, probe: Any, timeout: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        health = await eng.health()
        if probe(health):
            return health
        if loop.time() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {health}")
        await asyncio.sleep(0.1)
