"""Redis Cluster plumbing against a real local cluster (3 masters, 3 replicas; loadtests/redis_cluster.py):
the config, the Store on RedisCluster, scripts on any node (NOSCRIPT), coalesced pipelines that
span nodes, the stream consumer reading one slot per read, pub/sub and scans over every master."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from engine.app.settings import load_config
from engine.core import consumer as consumer_module
from engine.core import keys
from engine.core.batching import Coalescer
from engine.core.config import RedisConfig
from engine.core.consumer import Entry, StreamConsumer, ensure_group
from engine.core.errors import ConfigError
from engine.core.store import Store
from tests.conftest import ClusterURL, eventually, redis_client
from tests.redis_cluster import LocalCluster

#: One slot each, spread over the three masters (shards land evenly: engine/core/keys.py).
SHARDS = list(range(8))


@contextlib.asynccontextmanager
async def cluster_store(url: str) -> AsyncIterator[Store]:
    store = Store.connect(url, RedisConfig(url=url, cluster=True))
    try:
        await store.ping()
        yield store
    finally:
        await store.close()


def _masters_of(cluster: LocalCluster, names: list[str]) -> set[int]:
    return {cluster.master_of(n).port for n in names}


# -- config -------------------------------------------------------------------------------------


def test_cluster_is_switched_on_by_config_or_environment() -> None:
    env = {"PARLEY_REDIS_URL": "redis://10.0.0.1:7000", "PARLEY_REDIS_CLUSTER": "true",
           "PARLEY_REDIS_NODES": "10.0.0.2:7000, 10.0.0.3:7000"}  # fmt: skip
    cfg = load_config(env=env)
    assert cfg.redis.cluster is True
    assert cfg.redis.nodes == ["10.0.0.2:7000", "10.0.0.3:7000"]
    assert load_config(env={}).redis.cluster is False


@pytest.mark.parametrize(
    ("redis_section", "key"),
    [
        ({"nodes": ["10.0.0.2:7000"]}, "redis.nodes"),  # seeds without cluster: true
        ({"cluster": True}, "redis.url"),  # no node to start from
        ({"cluster": True, "url": "redis://a:1", "nodes": ["nohost"]}, "redis.nodes[0]"),
        ({"cluster": True, "url": "redis://a:1", "nodes": ["a:99999"]}, "redis.nodes[0]"),
    ],
)
def test_a_wrong_cluster_setting_is_refused_naming_the_key(redis_section: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env={}, overrides={"redis": redis_section})
    assert err.value.key == key


# -- store, scripts, pipelines ------------------------------------------------------------------


async def test_store_connects_to_the_cluster_from_any_node_and_runs_scripts_on_every_master(
    cluster_url: ClusterURL, redis_cluster: LocalCluster
) -> None:
    other = redis_cluster.nodes[-1]  # a replica, most likely: discovery starts anywhere
    async with cluster_store(f"redis://{other.addr}") as store:
        assert store.cluster
        store.register("bump", "return redis.call('INCRBY', KEYS[1], ARGV[1])")
        names = [f"p:t:{keys.shard_tag(s)}" for s in SHARDS]
        assert len(_masters_of(redis_cluster, names)) == 3
        for name in names:
            assert await store.run("bump", [name], [2]) == 2
            assert await store.run("bump", [name], [3]) == 5


async def test_a_turn_gets_its_own_replies_in_order_when_the_pipeline_spans_every_node(
    cluster_url: ClusterURL, redis_cluster: LocalCluster
) -> None:
    async with cluster_store(cluster_url) as store:
        store.register("bump", "return redis.call('INCRBY', KEYS[1], ARGV[1])")

        async def turn(s: int) -> list[Any]:
            key = f"p:t:{keys.shard_tag(s)}"

            async def add(pipe: Pipeline) -> None:
                pipe.set(key, s * 100)
                await store.run("bump", [key], [1], client=pipe)
                pipe.get(key)
                await store.run("bump", [key], [s], client=pipe)

            return await store.coalescer.run(add)

        results = await asyncio.gather(*(turn(s) for s in range(64)))
        for s, replies in enumerate(results):
            assert replies == [True, s * 100 + 1, str(s * 100 + 1).encode(), s * 101 + 1]


async def test_a_node_without_the_scripts_loads_them_and_the_turns_run_again(
    cluster_url: ClusterURL, redis_cluster: LocalCluster
) -> None:
    """A promoted replica or a new node has no scripts (SCRIPT LOAD is not replicated): the
    NOSCRIPT it answers loads them on every master and the request runs, once."""
    async with cluster_store(cluster_url) as store:
        store.register("bump", "return redis.call('INCRBY', KEYS[1], 1)")
        names = [f"p:t:{keys.shard_tag(s)}" for s in SHARDS]
        await store.load_scripts()
        for node in redis_cluster.primaries():
            c = node.client()
            c.script_flush()
            c.close()

        async def turn(name: str) -> list[Any]:
            async def add(pipe: Pipeline) -> None:
                await store.run("bump", [name], [], client=pipe)

            return await store.coalescer.run(add)

        assert await asyncio.gather(*(turn(n) for n in names)) == [[1]] * len(names)
        for node in redis_cluster.primaries():  # one script flush, one run each
            c = node.client()
            c.script_flush()
            c.close()
        assert [await store.run("bump", [n], []) for n in names] == [2] * len(names)


async def test_a_request_spanning_nodes_runs_each_script_once_when_one_node_lost_them(
    cluster_url: ClusterURL, redis_cluster: LocalCluster
) -> None:
    """One request with a script per shard (as the timers' poll): only the node that lost its
    scripts answers NOSCRIPT; those scripts, which did not run, run once the scripts are
    loaded, the others are not run twice."""
    async with cluster_store(cluster_url) as store:
        store.register("bump", "return redis.call('INCRBY', KEYS[1], 1)")
        names = [f"p:t:{keys.shard_tag(s)}" for s in SHARDS]
        await store.load_scripts()
        c = redis_cluster.master_of(names[0]).client()
        c.script_flush()
        c.close()

        async def add(pipe: Pipeline) -> None:
            for name in names:
                await store.run("bump", [name], [], client=pipe)

        assert await store.coalescer.run(add) == [1] * len(names)
        assert [int(await store.redis.get(n) or 0) for n in names] == [1] * len(names)


@pytest.mark.parametrize("failure", ["paused", "refusing"])
async def test_a_failed_node_fails_only_the_turns_whose_commands_went_there(
    cluster_url: ClusterURL, redis_cluster: LocalCluster, failure: str
) -> None:
    """One master stops answering (paused: replies time out) or refuses new connections; with
    no retries left the turns on the other two masters still get their replies, and only that
    master's turns see the error."""
    names = [f"p:t:{keys.shard_tag(s)}" for s in SHARDS]
    victim = redis_cluster.master_of(names[0])
    on_victim = [redis_cluster.master_of(n) is victim for n in names]
    seed = next(n for n in redis_cluster.primaries() if n is not victim)
    r = RedisCluster.from_url(f"redis://{seed.addr}", retry=Retry(NoBackoff(), 0), socket_timeout=0.3)
    admin = victim.client()
    coalescer = Coalescer(r)  # type: ignore[arg-type]

    async def turn(name: str) -> list[Any]:
        async def add(pipe: Pipeline) -> None:
            pipe.incr(name)
            pipe.incr(name)

        return await coalescer.run(add)

    try:
        await r.initialize()
        if failure == "paused":
            admin.execute_command("CLIENT", "PAUSE", 1000, "ALL")
        else:  # its connections cut and new ones refused: the pipeline to it cannot be sent
            admin.config_set("maxclients", 1)
            admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            await asyncio.gather(*(turn(n) for n in names), return_exceptions=True)  # finds them cut
            await asyncio.gather(*(r.delete(n) for n, v in zip(names, on_victim, strict=True) if not v))
        outcomes = await asyncio.gather(*(turn(n) for n in names), return_exceptions=True)
    finally:
        if failure == "paused":
            admin.execute_command("CLIENT", "UNPAUSE")
        else:
            admin.config_set("maxclients", 10000)
        admin.close()
        await r.aclose()
    assert any(on_victim) and not all(on_victim)
    for victims, outcome in zip(on_victim, outcomes, strict=True):
        if victims:
            assert isinstance(outcome, aioredis.RedisError), outcome
        else:
            assert outcome == [1, 2]


# -- stream consumer ----------------------------------------------------------------------------


class Collector(StreamConsumer):
    """Records every batch handed to it, as (recovering, entries)."""

    def __init__(self, redis: aioredis.Redis, streams: list[str]) -> None:
        super().__init__(redis, "g", "me", streams)
        self.batches: list[tuple[bool, list[Entry]]] = []
        self.seen: asyncio.Event = asyncio.Event()

    async def handle(self, entries: list[Entry], recovering: bool) -> bool:
        if entries:
            self.batches.append((recovering, entries))
            self.seen.set()
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream, entry_id, _ in entries:
                    pipe.xack(stream, self.group, entry_id)
                await pipe.execute()
        return False

    def got(self) -> dict[str, list[bytes]]:
        out: dict[str, list[bytes]] = {}
        for _, entries in self.batches:
            for stream, _, fields in entries:
                out.setdefault(stream, []).append(fields[b"n"])
        return out


async def _until(probe: Any) -> None:
    async def check() -> bool:
        return bool(probe())

    await eventually(check, attempts=500, interval=0.01)


async def test_the_consumer_reads_streams_of_every_slot_each_in_order(
    cluster_url: ClusterURL, redis_cluster: LocalCluster
) -> None:
    streams = [keys.inbound_stream(s) for s in SHARDS]
    assert len(_masters_of(redis_cluster, streams)) == 3
    async with cluster_store(cluster_url) as store:
        r = store.redis
        consumer = Collector(r, streams)
        async with consumer:
            for i in range(40):
                for stream in streams:
                    await r.xadd(stream, {"n": str(i)})
            await _until(lambda: sum(len(v) for v in consumer.got().values()) == 40 * len(streams))
        assert consumer.got() == {s: [str(i).encode() for i in range(40)] for s in streams}
        for stream in streams:
            assert (await r.xpending(stream, "g"))["pending"] == 0


async def test_the_consumer_reads_its_pending_entries_first_on_a_cluster(cluster_url: ClusterURL) -> None:
    streams = [keys.inbound_stream(s) for s in SHARDS]
    async with cluster_store(cluster_url) as store:
        r = store.redis
        for stream in streams:
            await ensure_group(r, stream, "g")
            await r.xadd(stream, {"n": "old"})
            await r.xreadgroup("g", "me", {stream: ">"})  # read by a previous run, never acknowledged
            await r.xadd(stream, {"n": "new"})
        consumer = Collector(r, streams)
        async with consumer:
            await _until(lambda: sum(len(v) for v in consumer.got().values()) == 2 * len(streams))
        assert consumer.got() == {s: [b"old", b"new"] for s in streams}
        first = {s: rec for rec, entries in consumer.batches for s, _, f in entries if f[b"n"] == b"old"}
        assert first == dict.fromkeys(streams, True)  # pending ones came in recovery reads


async def test_a_stream_given_up_is_no_longer_read_and_its_undelivered_entries_stay_for_the_next_owner(
    cluster_url: ClusterURL,
) -> None:
    streams = [keys.inbound_stream(s) for s in SHARDS]
    async with cluster_store(cluster_url) as store:
        r = store.redis
        consumer = Collector(r, streams)
        async with consumer:
            await r.xadd(streams[0], {"n": "1"})
            await _until(lambda: consumer.got().get(streams[0]) == [b"1"])
            consumer.streams = streams[1:]
            await consumer.stop_reading([streams[0]])  # what the worker does before releasing
            await r.xadd(streams[0], {"n": "2"})
            await r.xadd(streams[1], {"n": "x"})
            await _until(lambda: consumer.got().get(streams[1]) == [b"x"])
            await asyncio.sleep(0.6)  # longer than a blocking read
        assert consumer.got()[streams[0]] == [b"1"]
        # "2" was never delivered to this consumer: the next owner reads it as new.
        resp = await r.xreadgroup("g", "next-owner", {streams[0]: ">"})
        assert [f[b"n"] for _, batch in resp for _, f in batch] == [b"2"]


async def test_stopping_cancels_reads_that_are_only_waiting(cluster_url: ClusterURL) -> None:
    streams = [keys.inbound_stream(s) for s in SHARDS]
    async with cluster_store(cluster_url) as store:
        consumer = Collector(store.redis, streams)
        async with consumer:
            await asyncio.sleep(0.05)
            started = asyncio.get_running_loop().time()
        assert asyncio.get_running_loop().time() - started < 0.3
        assert consumer._reads == {}


@pytest.mark.redis_modes
async def test_a_consumer_with_nothing_to_read_lets_the_process_run_and_stops_at_once(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader with no stream yet (a sender holding no shard) waits; it never spins (which
    would starve the event loop: a process deaf even to SIGTERM). Stopping cancels its blocked
    read rather than waiting the read out (a long block here, so a loaded machine's slowness
    cannot pass for that wait, nor that wait for slowness)."""
    monkeypatch.setattr(consumer_module, "BLOCK_MS", 10_000)
    r = redis_client(redis_url)
    try:
        consumer = Collector(r, [])
        async with consumer:
            ticks = 0
            for _ in range(5):
                await asyncio.sleep(0.01)  # hangs if the loop never yields
                ticks += 1
            consumer.streams = [keys.inbound_stream(0)]
            await r.xadd(keys.inbound_stream(0), {"n": "1"})
            await _until(lambda: consumer.got() == {keys.inbound_stream(0): [b"1"]})
            started = asyncio.get_running_loop().time()
        assert ticks == 5
        assert asyncio.get_running_loop().time() - started < 3
    finally:
        await r.aclose()


# -- pub/sub and scans --------------------------------------------------------------------------


async def test_lease_changes_published_on_one_node_reach_a_subscriber_on_another(
    cluster_url: ClusterURL,
) -> None:
    async with cluster_store(cluster_url) as store:
        channel = keys.lease_changes("worker")
        async with store.redis.pubsub(ignore_subscribe_messages=True) as ps:
            await ps.subscribe(channel)
            for node in store.redis.get_primaries():  # type: ignore[attr-defined]
                await store.redis.execute_command("PUBLISH", channel, node.name, target_nodes=node)
            got = []
            async with asyncio.timeout(5):
                while len(got) < 3:
                    msg = await ps.get_message(timeout=1)
                    if msg is not None:
                        got.append(msg["data"].decode())
        assert sorted(got) == sorted(n.name for n in store.redis.get_primaries())  # type: ignore[attr-defined]


async def test_a_scan_covers_every_master(cluster_url: ClusterURL, redis_cluster: LocalCluster) -> None:
    async with cluster_store(cluster_url) as store:
        names = [keys.contact(f"+4477009{n:05d}", n % 8) for n in range(300)]
        assert len(_masters_of(redis_cluster, names[:8])) == 3
        for name in names:
            await store.redis.hset(name, "l", "en")
        found = {k.decode() async for k in store.redis.scan_iter(match=keys.contact_pattern(), count=50)}
        assert found == set(names)
