"""One real conversation end to end: webhook in, Redis stream, worker, commit, sender, carrier."""

from __future__ import annotations

import aiohttp
import pytest

from engine.app.runtime import Runtime
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import ANN, Turns

#: Each test that takes redis_url runs on one Redis and on a Redis Cluster (tests/conftest.py).
pytestmark = pytest.mark.redis_modes

RAJ = "+447700900456"


async def _inbound(api: aiohttp.ClientSession, text: str, pid: str, sender: str = ANN) -> tuple[int, dict]:
    async with api.post(
        "/v1/inbound/carrier", json={"from": sender, "to": "12345", "text": text, "id": pid}
    ) as r:
        return r.status, await r.json()


async def test_scripted_nps_conversation(
    rt: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier
) -> None:
    await api.put(f"/v1/contacts/{ANN}", json={"fields": {"first_name": "ann", "company": "Acme"}})
    async with api.post("/v1/flows/nps/start", json={"contacts": [ANN]}) as r:
        assert r.status == 202
        started = await r.json()
    assert [s["contact"] for s in started["started"]] == [ANN] and started["skipped"] == []

    first = await carrier.next_message(ANN)
    assert first.text.startswith("Hi Ann, thanks for choosing Acme.")
    assert first.sender == "12345"

    status, body = await _inbound(api, " 9! ", "mo-1")
    assert status == 202 and body["status"] == "accepted"
    assert (await carrier.next_message(ANN)).text == "Wonderful, thank you! What do you like most about us?"

    await _inbound(api, "Fast delivery", "mo-2")
    assert (await carrier.next_message(ANN)).text == (
        "Thank you Ann! Your 9/10 and your comments help us get better."
    )

    async with api.get(f"/v1/conversations/{ANN}") as r:
        conv = await r.json()
    assert conv["flow"] == "nps" and conv["status"] == "ended" and conv["outcome"] == "completed"
    assert conv["results"]["nps_score"]["value"] == 9
    assert conv["results"]["nps_score"]["category"] == "promoter"
    assert conv["results"]["reason"]["value"] == "Fast delivery"

    # The sender records the outcome after the handset got the message; wait for the last one.
    async with api.get("/v1/messages", params={"contact": ANN}) as r:
        log = (await r.json())["messages"]
    assert [(m["dir"], m["text"][:10]) for m in log] == [
        ("out", "Hi Ann, th"), ("in", " 9! "), ("out", "Wonderful,"),
        ("in", "Fast deliv"), ("out", "Thank you "),
    ]  # fmt: skip
    delivered = {m.id: m.provider_id for m in carrier.received}
    for m in log[:-1]:
        if m["dir"] == "out":
            assert m["status"] == "sent" and m["provider_id"] == delivered[m["id"]]
            assert [h["status"] for h in m["history"]] == ["queued", "sent"]


async def test_reprompt_then_detractor(
    rt: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier
) -> None:
    await api.put(f"/v1/contacts/{RAJ}", json={"fields": {"first_name": "raj"}})
    await api.post("/v1/flows/nps/start", json={"contacts": [RAJ]})
    await carrier.next_message(RAJ)
    await _inbound(api, "meh", "r-1", RAJ)
    assert (await carrier.next_message(RAJ)).text == "Sorry, please reply with a number from 0 to 10."
    await _inbound(api, "four", "r-2", RAJ)
    assert (await carrier.next_message(RAJ)).text == "We're sorry to hear that, Raj. What went wrong?"


async def test_duplicate_inbound_is_answered_once(
    rt: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier, turns: Turns
) -> None:
    await api.put(f"/v1/contacts/{ANN}", json={})
    await api.post("/v1/flows/nps/start", json={"contacts": [ANN]})
    await carrier.next_message(ANN)
    status, first = await _inbound(api, "10", "dup-1")
    assert status == 202
    status, again = await _inbound(api, "10", "dup-1")
    assert status == 200 and again["status"] == "duplicate" and again["event_id"] == first["event_id"]
    status, clash = await _inbound(api, "3", "dup-1")
    assert status == 409 and clash["error"]["code"] == "id_reused"
    await turns.wait(first["event_id"])
    await carrier.next_message(ANN)
    # A later text is processed normally; had the duplicate been processed, its reply would
    # be the next message here instead of this one.
    status, nxt = await _inbound(api, "great", "dup-2")
    await turns.wait(nxt["event_id"])
    assert (await carrier.next_message(ANN)).text.startswith("Thank you")
    assert len([m for m in carrier.received if m.to == ANN]) == 3


async def test_text_without_conversation_gets_no_reply_but_is_logged(
    rt: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier, turns: Turns
) -> None:
    _, body = await _inbound(api, "hello?", "x-1")
    done = await turns.wait(body["event_id"])
    assert done.result == "no_reply" and done.outbound_ids == []
    async with api.get("/v1/messages", params={"contact": ANN}) as r:
        log = (await r.json())["messages"]
    assert [(m["dir"], m["text"], m["status"]) for m in log] == [("in", "hello?", "received")]
    assert carrier.received == []


async def test_trigger_keyword_starts_the_flow(
    rt: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier
) -> None:
    await api.put(f"/v1/contacts/{ANN}", json={"fields": {"first_name": "Ann"}})
    await _inbound(api, " Nps! ", "t-1")
    assert (await carrier.next_message(ANN)).text.startswith("Hi Ann")


async def test_start_skips_contacts_in_a_conversation_unless_interrupting(
    rt: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier, turns: Turns
) -> None:
    for n in (ANN, RAJ):
        await api.put(f"/v1/contacts/{n}", json={})
    async with api.post("/v1/flows/nps/start", json={"contacts": [ANN]}) as r:
        await turns.wait((await r.json())["started"][0]["event_id"])
    await carrier.next_message(ANN)
    async with api.post("/v1/flows/nps/start", json={"contacts": [ANN, RAJ, RAJ]}) as r:
        body = await r.json()
    assert body["skipped"] == [{"contact": ANN, "reason": "in_conversation"}]
    assert [s["contact"] for s in body["started"]] == [RAJ]
    await carrier.next_message(RAJ)
    async with api.post("/v1/flows/nps/start", json={"contacts": [ANN], "interrupt": True}) as r:
        body = await r.json()
    assert [s["contact"] for s in body["started"]] == [ANN]
    assert (await carrier.next_message(ANN)).text.startswith("Hi there")
