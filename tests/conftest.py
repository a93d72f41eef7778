"""Test harness: a private redis-server for the session, flushed between tests; a running
engine wired to a simulated carrier; helpers that wait on events instead of sleeping.

Redis Cluster: a module marked ``pytestmark = pytest.mark.redis_modes`` runs each of its tests
that takes ``redis_url`` twice, on the single redis-server and on a real local cluster (3
masters, 3 replicas: loadtests/redis_cluster.py), started once for the session by the first test
that needs it (about 2 s). ``redis_url`` is then a :class:`ClusterURL`: :func:`make_config`
sets ``redis.cluster`` for it, and :func:`redis_client` connects the right client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import web

from engine.app.runtime import Runtime
from engine.app.settings import load_config
from engine.conversation.turn import TurnDone
from engine.core.clock import FakeClock
from engine.core.config import Config
from engine.core.redis_embedded import EmbeddedRedis
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.redis_cluster import LocalCluster

#: The console tests' fixtures (console_rt, console_engine, browser...): tests/console_support.py.
pytest_plugins = ["tests.console_support"]

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "test-key-0123456789abcdef"
ANN = "+447700900123"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """``REDIS_URL`` if set, else a private redis-server on a free port for the whole session."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    if shutil.which("redis-server") is None:
        pytest.exit("redis-server not found: install it (apt-get install redis-server) or set REDIS_URL", 2)
    with tempfile.TemporaryDirectory(prefix="parley-test-redis-") as tmp:
        server = EmbeddedRedis(tmp, persistent=False)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


class ClusterURL(str):
    """The address of a node of the test cluster (``make_config`` sets ``redis.cluster``)."""


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A private Redis Cluster (3 masters, 3 replicas) on loopback, for the whole session."""
    with (
        tempfile.TemporaryDirectory(prefix="parley-test-cluster-") as tmp,
        LocalCluster(Path(tmp)) as cluster,
    ):
        yield cluster


@pytest.fixture
def cluster_url(redis_cluster: LocalCluster) -> ClusterURL:
    """The test cluster, emptied (every master) before each test."""
    redis_cluster.flush()
    return ClusterURL(redis_cluster.url)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``redis_modes``: run the test on one Redis and on the cluster (see the module docstring).
    ``TEST_REDIS_MODE=cluster`` runs every test that takes ``redis_url`` on the cluster only."""
    if "redis_url" not in metafunc.fixturenames:
        return
    if os.environ.get("TEST_REDIS_MODE") == "cluster":
        metafunc.parametrize("redis_url", ["cluster"], indirect=True)
    elif metafunc.definition.get_closest_marker("redis_modes"):
        metafunc.parametrize("redis_url", ["single", "cluster"], indirect=True)


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, redis_server: str) -> str:
    """The test Redis, emptied before each test (the cluster under ``redis_modes``' "cluster")."""
    if getattr(request, "param", "single") == "cluster":
        url: str = request.getfixturevalue("cluster_url")
        return url
    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    client.close()
    return redis_server


def redis_client(redis_url: str) -> aioredis.Redis:
    """An asyncio client for ``redis_url``: a RedisCluster (typed as Redis) for the cluster."""
    if isinstance(redis_url, ClusterURL):
        from engine.core.config import RedisConfig
        from engine.core.store import connect_cluster

        return connect_cluster(redis_url, RedisConfig(url=redis_url, cluster=True))
    return aioredis.Redis.from_url(redis_url)


#: engine.shards of make_config's configuration.
SHARDS = 4


def shard(number: str, shards: int = SHARDS) -> int:
    """The shard of ``number`` under make_config (its keys take it: ``keys.session(n, shard(n))``)."""
    from engine.core import keys

    return keys.shard_of(number, shards)


def sync_redis_client(redis_url: str) -> redis.Redis:
    """A blocking client for ``redis_url`` (a RedisCluster, typed as Redis, for the cluster)."""
    if isinstance(redis_url, ClusterURL):
        return redis.RedisCluster.from_url(redis_url)  # type: ignore[return-value]
    return redis.Redis.from_url(redis_url)


def redis_section(redis_url: str) -> dict[str, Any]:
    """The ``redis`` config section for ``redis_url`` (plain text, for YAML and subprocesses)."""
    return {"url": str(redis_url), "cluster": isinstance(redis_url, ClusterURL)}


def make_config(redis_url: str, **sections: Any) -> Config:
    """A validated Config for tests; ``sections`` override (nested dicts) on top of the basics."""
    base: dict[str, Any] = {
        "redis": redis_section(redis_url),
        "http": {"port": 0},
        "api": {"keys": [API_KEY]},
        "engine": {"flows_dir": str(ROOT / "rules"), "shards": SHARDS, "shutdown_timeout": "5s"},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(name), dict):
            base[name] = {**base[name], **value}
        else:
            base[name] = value
    return load_config(env={}, overrides=base)


@contextlib.asynccontextmanager
async def serve(*routes: tuple[str, str, Any]) -> AsyncIterator[str]:
    """A far-edge stub on loopback: (method, path, handler) routes on a free port; yields the
    base URL (``http://127.0.0.1:PORT``)."""
    app = web.Application()
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def carrier() -> AsyncIterator[SimulatedCarrier]:
    async with SimulatedCarrier() as c:
        yield c


class Turns:
    """Collects finished turns so a test can await a specific one instead of sleeping."""

    def __init__(self) -> None:
        self.done: dict[str, TurnDone] = {}
        self._waiters: dict[str, asyncio.Future[TurnDone]] = {}

    def __call__(self, done: TurnDone) -> None:
        self.done[done.event.entry_id] = done
        fut = self._waiters.pop(done.event.entry_id, None)
        if fut is not None and not fut.done():
            fut.set_result(done)

    async def wait(self, event_id: str, timeout: float = 5.0) -> TurnDone:
        if event_id in self.done:
            return self.done[event_id]
        fut = self._waiters.setdefault(event_id, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(fut, timeout)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def rt(redis_url: str, carrier: SimulatedCarrier, clock: FakeClock) -> AsyncIterator[Runtime]:
    """A running engine: HTTP API on a free port, worker, sender to the simulated carrier."""
    cfg = make_config(
        redis_url,
        gateways={"carrier": {"type": "http", "url": carrier.url, "sender": "12345"}},
    )
    async with Runtime(cfg, clock=clock) as runtime:
        yield runtime


@pytest.fixture
def turns(rt: Runtime) -> Turns:
    t = Turns()
    assert rt.worker is not None
    rt.worker.listeners.append(t)
    return t


@pytest.fixture
async def api(rt: Runtime) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client for the engine's API, authenticated."""
    async with aiohttp.ClientSession(
        f"http://127.0.0.1:{rt.http_port}", headers={"Authorization": f"Bearer {API_KEY}"}
    ) as session:
        yield session


def run_parley(
    *args: str, env: dict[str, str] | None = None, stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the ``parley`` console script as a user would."""
    exe = Path(os.sys.executable).parent / "parley"  # type: ignore[attr-defined]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    full_env.update({k: str(v) for k, v in (env or {}).items()})
    if any(isinstance(v, ClusterURL) for v in (env or {}).values()):
        full_env["PARLEY_REDIS_CLUSTER"] = "true"
    return subprocess.run(
        [str(exe), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=full_env,
    )


async def eventually(probe: Any, *, attempts: int = 400, interval: float = 0.005) -> Any:
    """Await ``probe()`` until it returns something truthy (bounded), for state that lands just
    after an event a test can see (e.g. a status recorded after the handset got the message)."""
    for _ in range(attempts):
        value = await probe()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met after {attempts} tries")


async def process_stream(rt: Runtime, number: str) -> list[str]:
    """Run what waits on a contact's shard stream, in order, as the worker would; for tests that
    run no worker so they can set up an exact interleaving. Returns each turn's result."""
    from engine.conversation.events import Event
    from engine.conversation.turn import run_turn
    from engine.core import keys

    shard = keys.shard_of(number, rt.config.engine.shards)
    stream = keys.inbound_stream(shard)
    results = []
    for entry_id, fields in await rt.store.redis.xrange(stream):
        results.append((await run_turn(rt, Event.from_entry(shard, entry_id, fields))).result)
        await rt.store.redis.xdel(stream, entry_id)
    return results


async def outbound(rt: Runtime, gateway: str) -> list[dict[bytes, bytes]]:
    """Every message queued for ``gateway`` in both lanes (reply and bulk), in the order the
    turns that sent them happened (message ids are ``out-S-ms-seq-k``: the causing event, then k)."""
    from engine.core import keys

    entries = []
    for s in range(rt.config.engine.shards):
        for lane in keys.LANES:
            entries += [f for _, f in await rt.store.redis.xrange(keys.outbound_stream(s, gateway, lane))]

    def order(f: dict[bytes, bytes]) -> tuple[int, int, int]:
        _, _, ms, seq, k = f[b"m"].decode().split("-")
        return int(ms), int(seq), int(k)

    return sorted(entries, key=order)
