"""Flow versions: a conversation finishes on the version it started with, through a reload or a
restart; new conversations take the new file; an invalid reload changes nothing."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from engine.app.runtime import Runtime
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import ANN, API_KEY, make_config

BOB = "+447700900456"
V1 = """
name: survey
start: ask
nodes:
  ask:
    say: "v1: Was the delivery on time? YES or NO"
    wait: {save: on_time}
    cases: [{when: yes, goto: good}, {when: "no", goto: bad}]
    reprompt: {say: "v1: YES or NO please", max: 1}
  good: {say: "v1: Great!", end: done}
  bad: {say: "v1: Sorry!", end: done}
"""
V2 = """
name: survey
version: 2
start: rate
nodes:
  rate:
    say: "v2: Rate your delivery 1-5"
    wait: {save: rating}
    default: thanks
  thanks: {say: "v2: Thanks!", end: done}
"""


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    (tmp_path / "survey.yaml").write_text(V1)
    return tmp_path


def _cfg(redis_url: str, carrier: SimulatedCarrier, flows: Path):  # type: ignore[no-untyped-def]
    return make_config(
        redis_url,
        engine={"flows_dir": str(flows)},
        gateways={"carrier": {"type": "http", "url": carrier.url}},
    )


def _api(rt: Runtime) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        f"http://127.0.0.1:{rt.http_port}", headers={"Authorization": f"Bearer {API_KEY}"}
    )


async def _start(api: aiohttp.ClientSession, number: str) -> None:
    await api.put(f"/v1/contacts/{number}", json={})
    async with api.post("/v1/flows/survey/start", json={"contacts": [number]}) as r:
        assert r.status == 202


async def _text(api: aiohttp.ClientSession, number: str, text: str, pid: str) -> None:
    async with api.post("/v1/inbound/carrier", json={"from": number, "text": text, "id": pid}) as r:
        assert r.status == 202


async def test_reload_keeps_conversations_on_their_version(
    redis_url: str, carrier: SimulatedCarrier, flows: Path
) -> None:
    async with Runtime(_cfg(redis_url, carrier, flows)) as rt, _api(rt) as api:
        await _start(api, ANN)
        assert (await carrier.next_message(ANN)).text.startswith("v1: Was the delivery")
        (flows / "survey.yaml").write_text(V2)
        async with api.post("/v1/flows:reload") as r:
            assert r.status == 200
            body = await r.json()
        assert body["flows"]["survey"]["version"] == 2
        await _text(api, ANN, "yes", "a1")
        assert (await carrier.next_message(ANN)).text == "v1: Great!"
        await _start(api, BOB)
        assert (await carrier.next_message(BOB)).text == "v2: Rate your delivery 1-5"


async def test_a_restart_keeps_conversations_on_their_version(
    redis_url: str, carrier: SimulatedCarrier, flows: Path
) -> None:
    async with Runtime(_cfg(redis_url, carrier, flows)) as rt, _api(rt) as api:
        await _start(api, ANN)
        await carrier.next_message(ANN)
    (flows / "survey.yaml").write_text(V2)
    async with Runtime(_cfg(redis_url, carrier, flows)) as rt, _api(rt) as api:
        await _text(api, ANN, "maybe", "b1")
        assert (await carrier.next_message(ANN)).text == "v1: YES or NO please"
        await _text(api, ANN, "no", "b2")
        assert (await carrier.next_message(ANN)).text == "v1: Sorry!"


async def test_an_invalid_reload_changes_nothing(
    redis_url: str, carrier: SimulatedCarrier, flows: Path
) -> None:
    async with Runtime(_cfg(redis_url, carrier, flows)) as rt, _api(rt) as api:
        (flows / "survey.yaml").write_text(V1.replace("goto: good", "goto: gone"))
        async with api.post("/v1/flows:reload") as r:
            assert r.status == 422
            body = await r.json()
        assert body["error"]["code"] == "invalid_flows"
        assert any(
            "survey.yaml:" in p and "'gone', which is not a node" in p for p in body["error"]["problems"]
        )
        await _start(api, ANN)
        assert (await carrier.next_message(ANN)).text.startswith("v1: Was the delivery")
