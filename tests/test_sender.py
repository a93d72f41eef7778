"""The send pipeline against a misbehaving carrier: retries, rejections, order per contact."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from engine.clock import FakeClock
from engine.runtime import Runtime
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import ANN, API_KEY, eventually, make_config

TWO_STEP = """
name: two_step
start: hello
nodes:
  hello: {say: "First {{ params.n }}", goto: second}
  second: {say: "Second {{ params.n }}", goto: third}
  third: {say: "Third {{ params.n }}", end: done}
"""


async def _message(api: aiohttp.ClientSession, index: int = -1) -> dict | None:
    """The contact's message at ``index``, or None while the log is still empty."""
    async with api.get("/v1/messages", params={"contact": ANN}) as r:
        messages = (await r.json())["messages"]
    return messages[index] if messages else None


async def _settled(api: aiohttp.ClientSession) -> dict:
    """The last message once its send attempt has ended (it is no longer queued)."""

    async def probe() -> dict | None:
        rec = await _message(api)
        return rec if rec is not None and rec["status"] != "queued" else None

    result: dict = await eventually(probe)
    return result


async def test_retryable_failures_are_retried_until_sent(
    rt: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    carrier.fail_next = [503, 429, 500]
    await api.put(f"/v1/contacts/{ANN}", json={})
    before = clock.now_ms()
    await api.post("/v1/flows/nps/start", json={"contacts": [ANN]})
    await carrier.next_message(ANN)
    rec = await _settled(api)
    assert carrier.attempts == 4
    assert rec["status"] == "sent" and rec["provider_id"] == carrier.received[0].provider_id
    # Back-off ran on the injected clock: 0.25 s + 1 s + 4 s, not real time.
    assert clock.now_ms() - before == 5250


async def test_rejection_fails_the_message_without_retrying(
    rt: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier
) -> None:
    carrier.fail_next = [400]
    await api.put(f"/v1/contacts/{ANN}", json={})
    await api.post("/v1/flows/nps/start", json={"contacts": [ANN]})
    rec = await _settled(api)
    assert rec["status"] == "failed" and "HTTP 400" in rec["error"]
    assert [h["status"] for h in rec["history"]] == ["queued", "failed"]
    assert carrier.attempts == 1 and carrier.received == []


async def test_messages_to_one_contact_arrive_in_order_with_a_slow_carrier(
    redis_url: str, tmp_path: Path
) -> None:
    (tmp_path / "two_step.yaml").write_text(TWO_STEP)
    async with SimulatedCarrier(delay=0.01) as carrier:
        cfg = make_config(
            redis_url,
            engine={"flows_dir": str(tmp_path)},
            gateways={"carrier": {"type": "http", "url": carrier.url, "concurrency": 8}},
        )
        async with (
            Runtime(cfg) as rt,
            aiohttp.ClientSession(
                f"http://127.0.0.1:{rt.http_port}", headers={"Authorization": f"Bearer {API_KEY}"}
            ) as api,
        ):
            await api.put(f"/v1/contacts/{ANN}", json={})
            for n in range(3):
                await api.post("/v1/flows/two_step/start", json={"contacts": [ANN], "params": {"n": n}})
            got = [(await carrier.next_message(ANN)).text for _ in range(9)]
    assert got == [f"{w} {n}" for n in range(3) for w in ("First", "Second", "Third")]


async def test_unreachable_provider_is_retried_then_failed(redis_url: str, clock: FakeClock) -> None:
    from engine.redis_embedded import free_port

    cfg = make_config(
        redis_url,
        gateways={"dead": {"type": "http", "url": f"http://127.0.0.1:{free_port()}/send"}},
    )
    async with (
        Runtime(cfg, clock=clock) as rt,
        aiohttp.ClientSession(
            f"http://127.0.0.1:{rt.http_port}", headers={"Authorization": f"Bearer {API_KEY}"}
        ) as api,
    ):
        await api.put(f"/v1/contacts/{ANN}", json={})
        await api.post("/v1/flows/nps/start", json={"contacts": [ANN]})
        rec = await _settled(api)
    assert rec["status"] == "failed"
    assert "ClientConnectorError" in rec["error"] or "Connect" in rec["error"]
