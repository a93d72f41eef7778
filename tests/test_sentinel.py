"""``redis.sentinels``: Parley follows a Sentinel failover with no operator action. A primary, two
replicas and a sentinel run as real processes; texts flow in through a Runtime as a carrier's
retrying peers send them; the primary is SIGKILLed mid-stream; the sentinel promotes a replica.
With ``wait_replicas: 1`` nothing that was acknowledged is lost, and nothing is taken twice."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.app.runtime import Runtime
from engine.core import keys
from engine.core.config import Config
from tests.conftest import make_config
from tests.redis_nodes import Node, wait_replicated

MASTER = "parley"
SHARDS = 2
TEXTS = 300
PEERS = 8


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[tuple[Node, list[Node], Node]]:
    """A primary, two replicas of it and one sentinel (quorum 1) that calls a primary down after
    1 s without an answer (shorter risks a failover of a live primary on a busy machine)."""
    primary = Node(tmp_path)
    replicas = [Node(tmp_path, "--replicaof", "127.0.0.1", str(primary.port)) for _ in range(2)]
    nodes = [primary, *replicas]
    try:
        wait_replicated(primary, *replicas)
        sentinel = Node(
            tmp_path,
            sentinel_conf=(
                f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 1\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 2000\n"
                f"sentinel parallel-syncs {MASTER} 2\n"
            ),
        )
        nodes.append(sentinel)
        yield primary, replicas, sentinel
    finally:
        for n in nodes:
            n.kill()


def sentinel_config(sentinel: str, tmp_path: Path, wait_replicas: int = 1) -> Config:
    return make_config(
        "redis://any-host-the-sentinels-name-it/0",
        redis={
            "sentinels": [sentinel],
            "sentinel_master": MASTER,
            "wait_replicas": wait_replicas,
            "wait_timeout": "500ms",
        },
        engine={"flows_dir": str(tmp_path), "shards": SHARDS},
        gateways={"carrier": {"type": "http", "url": "http://127.0.0.1:9", "sender": "12345"}},
    )


async def test_a_primary_killed_mid_stream_is_replaced_and_no_acknowledged_text_is_lost(
    topology: tuple[Node, list[Node], Node], tmp_path: Path
) -> None:
    primary, replicas, sentinel = topology
    acked: list[str] = []
    refusals: Counter[str] = Counter()
    todo = iter(range(TEXTS))
    wait = int(os.environ.get("TEST_FAILOVER_WAIT_REPLICAS", "1"))  # 0: measure the loss without
    async with Runtime(
        sentinel_config(sentinel.addr, tmp_path, wait), http=False, worker=False, senders=False
    ) as rt:

        async def peer() -> None:
            """A carrier's connection: one text at a time, retried (same id) until taken."""
            for i in todo:
                deadline = time.monotonic() + 20
                while True:
                    try:
                        await rt.accept_inbound(
                            gateway="carrier", contact=f"+4477009{i:05d}", to="12345", text=f"t{i}",
                            provider_id=f"mo-{i}",
                        )  # fmt: skip
                        acked.append(f"mo-{i}")
                        if len(acked) == TEXTS // 3:
                            third.set()
                        break
                    except Exception as exc:  # what a peer sees as "not taken": it retries
                        refusals[type(exc).__name__] += 1
                        assert time.monotonic() < deadline, f"mo-{i} never taken: {exc!r}"
                        await asyncio.sleep(0.05)

        third = asyncio.Event()

        async def crash_primary() -> None:
            await third.wait()
            primary.kill()

        t0 = time.monotonic()
        await asyncio.gather(crash_primary(), *(peer() for _ in range(PEERS)))
        took = time.monotonic() - t0

    with sentinel.client() as s:
        _, port = s.sentinel_get_master_addr_by_name(MASTER)
    assert int(port) != primary.port, "the sentinel promoted no replica"
    switches = (sentinel.dir / "log").read_text().count("+switch-master")
    assert switches == 1, f"{switches} failovers: a live primary was failed over (machine too busy?)"
    new = next(r for r in replicas if r.port == int(port))
    ids = Counter(
        f[b"i"].decode()
        for shard in range(SHARDS)
        for _, f in new.client().xrange(keys.inbound_stream(shard))
    )
    lost = sorted(set(acked) - set(ids))
    twice = sorted(i for i, n in ids.items() if n > 1)
    print(f"\nfailover: {len(acked)} acknowledged in {took:.1f}s, refusals {dict(refusals)}, "
          f"lost {len(lost)}, taken twice {len(twice)}")  # fmt: skip
    if lost:  # which of the acknowledged: the last ones before the crash (replication lag)
        print(f"lost: acknowledged #{acked.index(lost[0])}..#{acked.index(lost[-1])}")
    assert len(acked) == TEXTS
    assert refusals, "the primary died mid-stream, so some texts must have been refused and retried"
    if wait:
        assert lost == [] and twice == []


async def test_sentinels_that_name_no_primary_stop_start_up_saying_so(tmp_path: Path) -> None:
    from engine.core.errors import RedisUnavailable
    from engine.core.redis_embedded import free_port

    nobody = f"127.0.0.1:{free_port()}"  # no sentinel listens there
    with pytest.raises(RedisUnavailable) as info:
        async with Runtime(sentinel_config(nobody, tmp_path), http=False, worker=False, senders=False):
            pass
    assert f"no primary 'parley' from the sentinels {nobody}" in str(info.value)
    assert "redis.sentinel_master" in str(info.value)
