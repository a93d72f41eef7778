"""``Store.durable`` on a real Redis Cluster (3 masters, a replica each): WAIT follows each
request's writes to the master of its slot, on the connection that wrote them, so a hung
replica refuses only the texts of its own master and a text is acknowledged only once the
replica of its master has it."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster

from engine.core.durable import ClusterDurable
from engine.core.errors import NotReplicated
from tests.redis_nodes import Node, start_cluster, tag_on


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Node]]:
    nodes = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield nodes
    finally:
        for n in nodes:
            n.kill()


@pytest.fixture
async def durable(cluster: list[Node]) -> AsyncIterator[ClusterDurable]:
    client = RedisCluster(host="127.0.0.1", port=cluster[0].port)
    await client.initialize()
    d = ClusterDurable(client, (1, 400))
    try:
        yield d
    finally:
        await d.aclose()
        await client.aclose()


def replica_xlen(replica: Node, key: str) -> int:
    """XLEN read on a cluster replica itself (READONLY on the same connection: no MOVED)."""
    pipe = replica.client().pipeline(transaction=False)
    pipe.execute_command("READONLY")
    pipe.xlen(key)
    return int(pipe.execute()[1])


def text(tag: str, n: int) -> object:
    async def add(pipe: Pipeline) -> None:
        pipe.xadd(f"p:in:{{{tag}}}", {"x": f"t{n}"})
        pipe.hset(f"p:dd:{{{tag}}}", f"id{n}", "1")

    return add


async def test_a_write_is_acknowledged_once_its_masters_replica_has_it(
    cluster: list[Node], durable: ClusterDurable
) -> None:
    masters, replicas = cluster[:3], cluster[3:]
    tags = [tag_on(m) for m in masters]
    for k in range(5):
        results = await asyncio.gather(*(durable.run(text(t, k)) for t in tags))  # type: ignore[arg-type]
        assert all(r[1] == 1 for r in results)
        for t, replica in zip(tags, replicas, strict=True):
            assert replica_xlen(replica, f"p:in:{{{t}}}") == k + 1


async def test_a_hung_replica_refuses_only_its_own_masters_writes(
    cluster: list[Node], durable: ClusterDurable
) -> None:
    masters, replicas = cluster[:3], cluster[3:]
    tags = [tag_on(m) for m in masters]
    replicas[0].signal(signal.SIGSTOP)
    try:
        results = await asyncio.gather(
            *(durable.run(text(t, 99)) for t in tags),
            return_exceptions=True,  # type: ignore[arg-type]
        )
    finally:
        replicas[0].signal(signal.SIGCONT)
    assert isinstance(results[0], NotReplicated)
    assert not isinstance(results[1], BaseException) and not isinstance(results[2], BaseException)


async def test_the_store_waits_per_master_on_a_cluster_client(cluster: list[Node]) -> None:
    from engine.core.config import RedisConfig
    from engine.core.store import Store

    client = RedisCluster(host="127.0.0.1", port=cluster[0].port)
    store = Store(client, RedisConfig(wait_replicas=1))  # type: ignore[arg-type]
    try:
        assert isinstance(store.durable, ClusterDurable)
        tag = tag_on(cluster[1])
        before = replica_xlen(cluster[4], f"p:in:{{{tag}}}")
        assert (await store.durable.run(text(tag, 1000)))[1] == 1  # type: ignore[arg-type]
        assert replica_xlen(cluster[4], f"p:in:{{{tag}}}") == before + 1
    finally:  # (Store.close on a cluster client is the Cluster store's)
        await store.durable.aclose()
        await client.aclose()
