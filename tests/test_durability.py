"""``redis.wait_replicas``: a text is acknowledged (202, deliver_sm_resp ESME_ROK) only once a real
replica has it; a replica that does not confirm in time turns the answer into a retryable
refusal, and the peer's retry after it is back loses nothing and duplicates nothing."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.app.runtime import Runtime
from engine.core import keys
from gateways.simulators.smsc import SimulatedSmsc, SmscBehaviour
from gateways.smpp import pdu
from tests.conftest import ANN, API_KEY, make_config
from tests.redis_nodes import Node, wait_replicated
from tests.test_smpp_gateway import bound, inbound_texts, smpp_gw

WAIT_TIMEOUT = 0.4


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    """A primary and one replica of it, in sync."""
    primary = Node(tmp_path)
    replica = Node(tmp_path, "--replicaof", "127.0.0.1", str(primary.port))
    try:
        wait_replicated(primary, replica)
        yield primary, replica
    finally:
        replica.kill()
        primary.kill()


def config(primary: Node, tmp_path: Path, replicas: int, **gateways: Any) -> Any:
    return make_config(
        primary.url,
        redis={"wait_replicas": replicas, "wait_timeout": f"{int(WAIT_TIMEOUT * 1000)}ms"},
        engine={"flows_dir": str(tmp_path), "shards": 1},
        gateways=gateways or {"carrier": {"type": "http", "url": "http://127.0.0.1:9", "sender": "12345"}},
    )


@pytest.fixture
async def api_of(
    pair: tuple[Node, Node], tmp_path: Path
) -> AsyncIterator[tuple[Runtime, aiohttp.ClientSession]]:
    """Intake only (no worker: the texts stay in the stream to be counted), wait_replicas 1."""
    async with (
        Runtime(config(pair[0], tmp_path, 1), worker=False, senders=False) as rt,
        aiohttp.ClientSession(
            f"http://127.0.0.1:{rt.http_port}", headers={"Authorization": f"Bearer {API_KEY}"}
        ) as http,
    ):
        yield rt, http


async def post_text(http: aiohttp.ClientSession, mid: str, text: str) -> tuple[int, dict[str, Any], str]:
    async with http.post(
        "/v1/inbound/carrier", json={"from": ANN, "to": "12345", "text": text, "id": mid}
    ) as r:
        return r.status, await r.json(), r.headers.get("Retry-After", "")


STREAM = keys.inbound_stream(0)


async def test_a_text_is_acknowledged_only_once_the_replica_has_it(
    pair: tuple[Node, Node], api_of: tuple[Runtime, aiohttp.ClientSession]
) -> None:
    primary, replica = pair
    _, http = api_of
    on_primary, on_replica = primary.client(), replica.client()
    on_primary.config_resetstat()  # the fixture's own WAITs
    for i in range(30):
        status, _, _ = await post_text(http, f"m{i}", f"text {i}")
        assert status == 202
        # At the moment of the 202 the replica holds every text acknowledged so far.
        assert on_replica.xlen(STREAM) == on_primary.xlen(STREAM) == i + 1
    assert on_primary.info("commandstats")["cmdstat_wait"]["calls"] >= 30


async def test_a_stalled_replica_turns_the_answer_into_a_503_and_the_retry_loses_nothing(
    pair: tuple[Node, Node], api_of: tuple[Runtime, aiohttp.ClientSession]
) -> None:
    primary, replica = pair
    _, http = api_of
    assert (await post_text(http, "m0", "before"))[0] == 202
    replica.signal(signal.SIGSTOP)  # hung: linked, but confirming nothing
    try:
        t0 = time.monotonic()
        status, body, retry_after = await post_text(http, "m1", "during")
        took = time.monotonic() - t0
        assert status == 503 and body["error"]["code"] == "not_replicated" and retry_after == "5"
        assert WAIT_TIMEOUT <= took < WAIT_TIMEOUT + 0.5
        # The provider retries while the replica is still away: refused again, not "duplicate".
        assert (await post_text(http, "m1", "during"))[0] == 503
    finally:
        replica.signal(signal.SIGCONT)
    status, body, _ = await post_text(http, "m1", "during")  # the retry, replica back
    assert (status, body["status"]) == (200, "duplicate")
    texts = [f[b"x"].decode() for _, f in primary.client().xrange(STREAM)]
    assert texts == ["before", "during"]  # once each
    assert replica.client().xlen(STREAM) == 2


async def test_without_wait_replicas_intake_sends_no_wait(pair: tuple[Node, Node], tmp_path: Path) -> None:
    primary, _ = pair
    primary.client().config_resetstat()  # the fixture's own WAITs
    async with (
        Runtime(config(primary, tmp_path, 0), worker=False, senders=False) as rt,
        aiohttp.ClientSession(
            f"http://127.0.0.1:{rt.http_port}", headers={"Authorization": f"Bearer {API_KEY}"}
        ) as http,
    ):
        assert (await post_text(http, "m0", "hi"))[0] == 202
    assert "cmdstat_wait" not in primary.client().info("commandstats")


async def test_flow_starts_wait_for_the_replica_too(
    pair: tuple[Node, Node], api_of: tuple[Runtime, aiohttp.ClientSession], tmp_path: Path
) -> None:
    from engine.conversation import intake

    _, replica = pair
    rt, _ = api_of
    (event_id,) = await intake.enqueue_starts(rt, "any", [ANN], {})
    assert replica.client().xrange(STREAM) and event_id
    replica.signal(signal.SIGSTOP)
    try:
        from engine.core.errors import NotReplicated

        with pytest.raises(NotReplicated):
            await intake.enqueue_starts(rt, "any", [ANN], {})
    finally:
        replica.signal(signal.SIGCONT)


async def test_smpp_texts_the_replica_did_not_confirm_are_answered_with_a_temporary_error(
    pair: tuple[Node, Node], tmp_path: Path
) -> None:
    primary, replica = pair
    async with SimulatedSmsc(behaviour=SmscBehaviour(dlr_delay=0.01)) as smsc:
        cfg = config(primary, tmp_path, 1, smsc=smpp_gw(smsc))
        async with Runtime(cfg, http=False, worker=False) as rt:
            await bound(rt)
            assert await smsc.deliver("447700900123", "12345", "one") == [pdu.ESME_ROK]
            replica.signal(signal.SIGSTOP)
            try:
                assert await smsc.deliver("447700900123", "12345", "two") == [pdu.ESME_RX_T_APPN]
            finally:
                replica.signal(signal.SIGCONT)
            assert await smsc.deliver("447700900123", "12345", "two") == [pdu.ESME_ROK]
            # Redelivered with a new sequence number: "two" is there twice, never lost.
            assert await inbound_texts(rt) == [(ANN, "one"), (ANN, "two"), (ANN, "two")]
            assert replica.client().xlen(STREAM) == 3


async def test_a_hung_replica_holds_few_connections_so_turns_keep_their_redis(
    pair: tuple[Node, Node], tmp_path: Path
) -> None:
    """Each intake pipeline blocks its connection in WAIT for up to wait_timeout. Texts keep
    coming while the replica is hung: they queue for a few waiting pipelines instead of taking
    every pooled connection, so the turns (and everything else on the pool) are not starved."""
    primary, replica = pair
    cfg = make_config(
        primary.url,
        redis={"wait_replicas": 1, "wait_timeout": "1s", "max_connections": 8, "pool_timeout": "5s"},
        engine={"flows_dir": str(tmp_path), "shards": 1},
    )
    async with Runtime(cfg, http=False, worker=False, senders=False) as rt:
        replica.signal(signal.SIGSTOP)
        try:
            texts = []
            for i in range(30):  # one per event-loop pass, as webhooks arrive
                texts.append(asyncio.ensure_future(rt.accept_inbound(
                    gateway="carrier", contact=ANN, to="12345", text=f"t{i}", provider_id=f"m{i}")))  # fmt: skip
                await asyncio.sleep(0.005)
            t0 = time.monotonic()
            await rt.store.redis.ping()  # what a turn's load would need: a pooled connection
            assert time.monotonic() - t0 < 0.5
            results = await asyncio.gather(*texts, return_exceptions=True)
            assert all(type(r).__name__ == "NotReplicated" for r in results), results
        finally:
            replica.signal(signal.SIGCONT)
