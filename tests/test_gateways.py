"""Connector configuration, the generic JSON connector's request shapes and webhooks, routing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from engine.app.runtime import Runtime
from engine.core.errors import ConfigError, GatewayRejected, GatewayUnavailable
from gateways.base import OutboundMessage
from gateways.registry import build_gateway, validate_gateway_config
from gateways.routing import Router, parse_rules
from tests.conftest import ANN, API_KEY, make_config, serve


class Provider:
    """A JSON provider on loopback that records requests and answers what it is told."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], Any]] = []
        self.answer: tuple[int, bytes, dict[str, str]] = (
            200,
            b'{"data": {"messages": [{"ref": "p-1"}]}}',
            {},
        )
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), orjson.loads(await request.read())))
        status, body, headers = self.answer
        return web.Response(status=status, body=body, headers=headers, content_type="application/json")


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    p = Provider()
    async with serve(("POST", "/messages", p.handle)) as base:
        p.url = f"{base}/messages"
        yield p


MSG = OutboundMessage(id="out-1-2-0", to=ANN, text='Say "hi" ✓', sender="ACME", segments=1)


async def test_the_body_template_headers_and_id_path_shape_each_request(provider: Provider) -> None:
    raw = {
        "type": "http", "url": provider.url, "sender": "ACME", "authorization": "Bearer k",
        "headers": {"X-Account": "42"}, "id_path": "data.messages.0.ref",
        "body": {"msisdn": "$to", "message": {"text": "$text", "parts": "$segments"}, "ref": "parley-${id}"},
    }  # fmt: skip
    async with build_gateway("acme", raw) as gw:
        result = await gw.send(MSG)
    headers, body = provider.requests[0]
    assert result.provider_id == "p-1"
    assert body == {"msisdn": ANN, "message": {"text": 'Say "hi" ✓', "parts": 1}, "ref": "parley-out-1-2-0"}
    assert headers["Authorization"] == "Bearer k" and headers["X-Account"] == "42"
    assert headers["Idempotency-Key"] == "out-1-2-0"  # the same on every retry


async def test_answers_map_to_retry_reject_and_maybe_taken(provider: Provider) -> None:
    async with build_gateway("acme", {"type": "http", "url": provider.url}) as gw:
        provider.answer = (429, b"slow down", {"Retry-After": "12"})
        with pytest.raises(GatewayUnavailable) as busy:
            await gw.send(MSG)
        assert busy.value.retry_after == 12.0 and not busy.value.ambiguous
        provider.answer = (502, b"bad gateway", {})
        with pytest.raises(GatewayUnavailable) as maybe:
            await gw.send(MSG)
        assert maybe.value.ambiguous  # it may have gone out: never failed over
        provider.answer = (422, b'{"error": "invalid number"}', {})
        with pytest.raises(GatewayRejected, match="invalid number"):
            await gw.send(MSG)
        provider.answer = (200, b'{"status": "ok"}', {})
        with pytest.raises(GatewayRejected, match="without a message id at 'id'"):
            await gw.send(MSG)


@pytest.mark.parametrize(
    ("raw", "key", "message"),
    [
        ({"body": {"to": "$phone"}}, "gateways.acme.body.to", "unknown placeholder $phone"),
        ({"body": {"x": ["a", "costs 5$"]}}, "gateways.acme.body.x[1]", "lone $"),
        ({"status_map": {"DONE": "finished"}}, "gateways.acme.status_map.DONE", "must be one of"),
        ({"webhook_user": "jasmin"}, "gateways.acme.webhook_password", "together"),
        ({"rate": -1}, "gateways.acme.rate", "0 (no limit) or more"),
        ({"concurrency": 0}, "gateways.acme.concurrency", "at least 1"),
        ({"max_age": "soon"}, "gateways.acme.max_age", "duration"),
    ],
)
def test_connector_config_errors_name_the_key(raw: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_gateway_config("acme", {"type": "http", "url": "http://x", **raw})
    assert err.value.key == key and message in err.value.problem


@pytest.mark.parametrize(
    ("routing", "key"),
    [
        ([{"via": ["nope"]}], "routing[0].via[0]"),
        ([{"via": ["p"], "match": {"prefix": "44"}}], "routing[0].match.prefix"),
        ([{"via": ["p"], "match": {"country": "XX"}}], "routing[0].match.country"),
        ([{"via": ["p"], "match": {"carrier": "o2"}}], "routing[0].match.carrier"),
        ([{"via": ["p", "p"]}], "routing[0].via"),
        ([{"via": ["p"]}, {"to": ["p"]}], "routing[1].to"),
    ],
)
def test_routing_errors_name_the_rule(redis_url: str, routing: list[Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(redis_url, gateways={"p": {"type": "http", "url": "http://x"}}, routing=routing)
    assert err.value.key == key, str(err.value)


# Routing -------------------------------------------------------------------------------------

SENDERS = ["uk", "us", "bulk", "twilio"]
RULES = parse_rules(
    [
        {"match": {"country": ["GB", "IE"]}, "via": ["uk", "twilio"]},
        {"match": {"flow": "appointment"}, "via": ["twilio"]},
        {"match": {"prefix": "+1212"}, "via": ["us", "twilio"]},
        {"match": {"sender": "12345"}, "via": ["bulk"]},
        {"via": ["bulk", "twilio"]},
    ],
    set(SENDERS),
)


def test_the_first_matching_rule_decides_and_replies_go_back_their_way_in() -> None:
    r = Router(RULES, SENDERS, "")
    assert r.route(ANN) == ["uk", "twilio"]
    assert r.route("+353851234567") == ["uk", "twilio"]
    assert r.route("+12125550123", flow="appointment") == ["twilio"]
    assert r.route("+12125550123") == ["us", "twilio"]
    assert r.route("+33612345678", sender="12345") == ["bulk"]
    assert r.route("+33612345678") == ["bulk", "twilio"]
    # A reply leaves through the connector its text came in on, the rule's others as failover.
    assert r.route(ANN, inbound="twilio") == ["twilio", "uk"]
    assert Router([], ["only"], "").route(ANN) == ["only"]
    assert Router([], ["a", "b"], "").route(ANN) == []  # nothing says which: the record says so


@given(
    contact=st.from_regex(r"\+[1-9][0-9]{7,13}", fullmatch=True),
    flow=st.sampled_from(["", "nps", "appointment"]),
    inbound=st.sampled_from(["", "console", *SENDERS]),
)
def test_a_route_never_names_a_connector_twice(contact: str, flow: str, inbound: str) -> None:
    route = Router(RULES, SENDERS, "").route(contact, flow=flow, inbound=inbound)
    assert route and len(route) == len(set(route))
    assert set(route) <= set(SENDERS)
    if inbound in SENDERS:
        assert route[0] == inbound


# Webhooks of the generic connector ------------------------------------------------------------

SECRET = "webhook-secret-0123456789"


@pytest.fixture
async def signed(redis_url: str) -> AsyncIterator[tuple[Runtime, str]]:
    gateways = {
        "signed": {"type": "http", "url": "http://127.0.0.1:9/send", "webhook_secret": SECRET},
        "basic": {"type": "http", "url": "http://127.0.0.1:9/send", "webhook_user": "prov", "webhook_password": "pw-123"},
        "plain": {"type": "http", "url": "http://127.0.0.1:9/send"},
    }  # fmt: skip
    async with Runtime(make_config(redis_url, gateways=gateways), senders=False, worker=False) as rt:
        yield rt, f"http://127.0.0.1:{rt.http_port}"


def _signature(body: bytes, ts: int, secret: str = SECRET) -> dict[str, str]:
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return {
        "X-Parley-Timestamp": str(ts),
        "X-Parley-Signature": f"sha256={mac}",
        "Content-Type": "application/json",
    }


async def test_inbound_webhooks_are_checked_by_the_connectors_scheme(signed: tuple[Runtime, str]) -> None:
    rt, base = signed
    text = orjson.dumps({"from": ANN, "to": "12345", "text": "hi", "id": "mo-1"})
    now = int(time.time())
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/v1/inbound/signed", data=text, headers=_signature(text, now)) as r:
            assert r.status == 202
        async with s.post(f"{base}/v1/inbound/signed", data=text, headers=_signature(text, now - 301)) as r:
            assert r.status == 401 and "replayed" in (await r.json())["error"]["message"]
        tampered = text.replace(b"hi", b"yo")
        async with s.post(f"{base}/v1/inbound/signed", data=tampered, headers=_signature(text, now)) as r:
            assert r.status == 401 and "does not match" in (await r.json())["error"]["message"]
        # The API key is no substitute for the provider's signature.
        async with s.post(
            f"{base}/v1/inbound/signed", data=text, headers={"Authorization": f"Bearer {API_KEY}"}
        ) as r:
            assert r.status == 401
        good = "Basic " + base64.b64encode(b"prov:pw-123").decode()
        bad = "Basic " + base64.b64encode(b"prov:guess").decode()
        async with s.post(f"{base}/v1/inbound/basic", data=text, headers={"Authorization": bad}) as r:
            assert r.status == 401
        async with s.post(f"{base}/v1/inbound/basic", data=text, headers={"Authorization": good}) as r:
            assert r.status == 202
        # Without a scheme of its own a connector's webhooks take the API key, as before.
        async with s.post(f"{base}/v1/inbound/plain", data=text) as r:
            assert r.status == 401
        async with s.post(
            f"{base}/v1/inbound/plain", data=text, headers={"Authorization": f"Bearer {API_KEY}"}
        ) as r:
            assert r.status == 202
    # Three texts taken (one per connector that let it in), nothing from the refused requests.
    from engine.core import keys

    taken = [await rt.store.redis.xlen(keys.inbound_stream(s)) for s in range(rt.config.engine.shards)]
    assert sum(taken) == 3


async def test_a_batch_of_inbound_texts_is_taken_whole_or_not_at_all(signed: tuple[Runtime, str]) -> None:
    _, base = signed
    headers = {"Authorization": f"Bearer {API_KEY}"}
    batch = [{"from": ANN, "text": "one", "id": "a"}, {"from": "not a number", "text": "two", "id": "b"}]
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/v1/inbound/plain", json=batch, headers=headers) as r:
            assert r.status == 422
            assert (await r.json())["error"]["message"].startswith("[1].from")
        async with s.post(f"{base}/v1/inbound/plain", json=batch[:1], headers=headers) as r:
            assert r.status == 202 and (await r.json())["status"] == "accepted"
