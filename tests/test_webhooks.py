"""Outcome webhooks: real NPS conversations reach a stub CRM on loopback, signed, in order per
contact, once; failures are retried, dead-lettered and replayed; a dispatcher stopped
mid-delivery sends again on restart with the same event id; a trimmed gap is counted."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.app.runtime import Runtime
from engine.core import keys
from engine.core.clock import Clock, FakeClock
from engine.core.config import Config
from engine.core.errors import ConfigError
from engine.crm.webhooks import event_id_of
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import API_KEY, eventually, make_config, redis_client, serve, shard

SECRET = "crm-webhook-secret-0123456789"
A, B = "+447700900201", "+447700900202"
#: What a promoter answering "9" then "Fast" leaves on p:fx, for a webhook taking these types.
JOURNEY = ["started", "replied", "result", "replied", "result", "ended"]
TYPES = ["started", "replied", "result", "ended"]


@dataclass
class Hit:
    at: float
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def event_id(self) -> str:
        return self.headers["X-Parley-Event-Id"]

    @property
    def event(self) -> dict[str, Any]:
        e: dict[str, Any] = orjson.loads(self.body)
        return e


class StubCrm:
    """A CRM receiver on loopback. ``answer(hit) -> (status, headers)`` decides each answer
    (default 200); ``hang`` holds requests until released. Every request is kept in ``hits``."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.answer: Callable[[Hit], tuple[int, dict[str, str]]] = lambda hit: (200, {})
        self.hang = False
        self.release = asyncio.Event()
        self.url = ""

    async def __aenter__(self) -> StubCrm:
        self._stack = contextlib.AsyncExitStack()
        self.url = f"{await self._stack.enter_async_context(serve(('POST', '/events', self._handle)))}/events"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        await self._stack.aclose()

    async def _handle(self, request: web.Request) -> web.Response:
        hit = Hit(time.monotonic(), dict(request.headers), await request.read(), 0)
        self.hits.append(hit)
        if self.hang:
            await self.release.wait()
        hit.status, headers = self.answer(hit)
        return web.Response(status=hit.status, headers=headers, text="no" if hit.status >= 300 else "ok")

    def delivered(self, contact: str | None = None) -> list[Hit]:
        """The requests answered 2xx (of one contact), in the order they arrived."""
        return [
            h
            for h in self.hits
            if 200 <= h.status < 300 and (contact is None or h.event["contact"] == contact)
        ]


def verify(hit: Hit, secret: str = SECRET) -> None:
    """What a CRM does: recompute the HMAC of "{timestamp}." + body and refuse stale timestamps."""
    ts = hit.headers["X-Parley-Timestamp"]
    want = "sha256=" + hmac.new(secret.encode(), f"{ts}.".encode() + hit.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(want, hit.headers["X-Parley-Signature"])
    assert abs(time.time() - int(ts)) < 300
    assert hit.headers["Content-Type"] == "application/json"


@pytest.fixture
async def crm() -> AsyncIterator[StubCrm]:
    async with StubCrm() as c:
        yield c


def config(redis_url: str, carrier: SimulatedCarrier, crm: StubCrm, **hook: Any) -> Config:
    gateways = {"carrier": {"type": "http", "url": carrier.url, "sender": "12345"}}
    engine = {"shutdown_timeout": hook.pop("shutdown_timeout", "5s")}
    webhook = {"url": crm.url, "secret": SECRET, "backoff": "10ms", **hook}
    return make_config(redis_url, gateways=gateways, engine=engine, crm={"webhooks": [webhook]})


@contextlib.asynccontextmanager
async def running(
    cfg: Config, clock: Clock | None = None, senders: bool = True
) -> AsyncIterator[tuple[Runtime, aiohttp.ClientSession]]:
    async with (
        Runtime(cfg, clock=clock or FakeClock(), senders=senders) as rt,
        aiohttp.ClientSession(
            f"http://127.0.0.1:{rt.http_port}", headers={"Authorization": f"Bearer {API_KEY}"}
        ) as api,
    ):
        yield rt, api


async def start_nps(api: aiohttp.ClientSession, *contacts: str) -> None:
    for n in contacts:
        async with api.put(f"/v1/contacts/{n}", json={"fields": {"first_name": "Sam"}}) as r:
            assert r.status in (200, 201)
    async with api.post("/v1/flows/nps/start", json={"contacts": list(contacts)}) as r:
        assert r.status == 202


async def answer(rt: Runtime, carrier: SimulatedCarrier, contact: str, *texts: str) -> None:
    url = f"http://127.0.0.1:{rt.http_port}/v1/inbound/carrier"
    for text in texts:
        await carrier.next_message(contact)
        await carrier.text_in(url, API_KEY, contact, text)
    await carrier.next_message(contact)


async def wait_for(probe: Callable[[], bool], seconds: float = 5.0) -> None:
    async def check() -> bool:
        return probe()

    await eventually(check, attempts=int(seconds / 0.005))


def sample(rt: Runtime, name: str, **labels: str) -> float:
    rt.metrics.flush()
    return rt.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_conversations_reach_the_crm_signed_in_order_and_once(
    redis_url: str, carrier: SimulatedCarrier, crm: StubCrm
) -> None:
    async with running(config(redis_url, carrier, crm, events=TYPES)) as (rt, api):
        await start_nps(api, A, B)
        await asyncio.gather(answer(rt, carrier, A, "9", "Fast"), answer(rt, carrier, B, "10", "Kind"))
        await wait_for(lambda: len(crm.hits) >= 2 * len(JOURNEY))
        await asyncio.sleep(0.2)  # nothing more comes
        stored = {
            c: cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                await rt.store.redis.xrange(keys.flow_events(shard(c))),
            )
            for c in (A, B)
        }
    assert len(crm.hits) == 2 * len(JOURNEY) and len({h.event_id for h in crm.hits}) == len(crm.hits)
    for hit in crm.hits:
        verify(hit)
        assert hit.event["id"] == hit.event_id
    # Per contact, exactly the subscribed entries of its shard's p:fx:T, in stream order, with
    # their entry ids (the shard before it, but for shard 0: ids are unique per stream).
    for contact in (A, B):
        want = [
            event_id_of(shard(contact), eid)
            for eid, f in stored[contact]
            if (e := orjson.loads(f[b"e"]))["c"] == contact and e["t"] in TYPES
        ]
        got = crm.delivered(contact)
        assert [h.event_id for h in got] == want
        assert [h.event["type"] for h in got] == JOURNEY
    # Events of other types were on the stream but not sent.
    assert any(orjson.loads(f[b"e"])["t"] == "message" for _, f in stored[A])
    first = crm.delivered(A)
    assert first[0].event["flow"] == "nps" and first[0].event["run"].startswith(f"{A}/")
    assert first[0].event["at"].endswith("Z") and "params" in first[0].event
    assert first[2].event["name"] == "nps_score" and first[2].event["category"] == "promoter"
    assert first[-1].event["outcome"] == "completed"
    assert sample(rt, "parley_webhook_deliveries_total", webhook="0", result="delivered") == 12


async def test_a_failing_receiver_gets_the_event_on_the_third_attempt(
    redis_url: str, carrier: SimulatedCarrier, crm: StubCrm
) -> None:
    crm.answer = lambda hit: (500, {}) if len(crm.hits) <= 2 else (200, {})
    async with running(config(redis_url, carrier, crm, events=["started"])) as (rt, api):
        await start_nps(api, A)
        await wait_for(lambda: len(crm.delivered()) == 1)
        assert [h.status for h in crm.hits] == [500, 500, 200]
        assert len({h.event_id for h in crm.hits}) == 1 and len({h.body for h in crm.hits}) == 1
        assert sample(rt, "parley_webhook_deliveries_total", webhook="0", result="retry") == 2

        async def acknowledged() -> bool:  # after the CRM's 200, not before it: awaited, not raced
            group = keys.webhook_group(0, crm.url)
            return (await rt.store.redis.xpending(keys.flow_events(shard(A)), group))["pending"] == 0

        assert await eventually(acknowledged)


async def test_a_contact_waits_for_its_earlier_event_while_others_go_on(
    redis_url: str, carrier: SimulatedCarrier, crm: StubCrm
) -> None:
    """A's first event is refused (429 with Retry-After, then a 500) while B's whole journey is
    delivered; A's later events are not sent before it; Retry-After is honoured (real clock)."""
    refusals = iter([(429, {"Retry-After": "1"}), (500, {})])

    def answer_(hit: Hit) -> tuple[int, dict[str, str]]:
        if hit.event["contact"] == A:
            return next(refusals, (200, {}))
        return 200, {}

    crm.answer = answer_
    async with running(config(redis_url, carrier, crm, events=TYPES), clock=Clock()) as (rt, api):
        await start_nps(api, A, B)
        await asyncio.gather(answer(rt, carrier, A, "9", "Fast"), answer(rt, carrier, B, "10", "Kind"))
        await wait_for(lambda: len(crm.delivered()) == 2 * len(JOURNEY), seconds=10)
    a_hits = [h for h in crm.hits if h.event["contact"] == A]
    assert [h.status for h in a_hits[:3]] == [429, 500, 200]
    assert len({h.event_id for h in a_hits[:3]}) == 1  # nothing later of A's until the first got through
    assert a_hits[1].at - a_hits[0].at >= 0.9  # Retry-After: 1
    assert [h.event["type"] for h in crm.delivered(A)] == JOURNEY
    assert crm.delivered(B)[-1].at < a_hits[2].at  # B was not held up by A


async def test_a_receiver_that_keeps_failing_gets_a_dead_letter_that_replay_delivers(
    redis_url: str, carrier: SimulatedCarrier, crm: StubCrm
) -> None:
    crm.answer = lambda hit: (500, {})
    async with running(config(redis_url, carrier, crm, events=["started"], max_attempts=3)) as (rt, api):
        await start_nps(api, A)
        await wait_for(lambda: len(crm.hits) == 3)

        async def dead() -> dict[str, Any]:
            async with api.get("/v1/webhooks/dead") as r:
                assert r.status == 200
                body: dict[str, Any] = await r.json()
                return body if body["webhooks"][0]["count"] else {}

        listed = (await eventually(dead))["webhooks"][0]
        assert listed["url"] == crm.url and listed["count"] == 1
        (letter,) = listed["dead"]
        assert letter["event_id"] == crm.hits[0].event_id and letter["attempts"] == 3
        assert letter["error"].startswith("HTTP 500") and letter["event"]["type"] == "started"
        assert letter["event"] == crm.hits[0].event
        # Counted once the entry is finished: the letter is written first, then the entry
        # acknowledged, then the count (the API can show the letter in between).
        await wait_for(lambda: sample(rt, "parley_webhook_deliveries_total", webhook="0", result="dead") == 1)

        crm.answer = lambda hit: (200, {})  # the CRM is back
        async with api.post("/v1/webhooks/dead:replay") as r:
            assert r.status == 200 and await r.json() == {"replayed": {"0": 1}}
        await wait_for(lambda: len(crm.delivered()) == 1)
        assert crm.delivered()[0].event_id == letter["event_id"]
        verify(crm.delivered()[0])
        await asyncio.sleep(0.1)
        assert len(crm.hits) == 4
        assert await rt.store.redis.xlen(keys.webhook_dead(0)) == 0
        assert await eventually(lambda: _empty(rt, keys.webhook_retry(0)))
        async with api.post("/v1/webhooks/dead:replay", json={"webhook": 0}) as r:
            assert await r.json() == {"replayed": {"0": 0}}
        async with api.post("/v1/webhooks/dead:replay", json={"webhook": 3}) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "webhook_not_found"
        async with api.post("/v1/webhooks/dead:replay", json={"ids": ["1-0"]}) as r:
            assert r.status == 422


async def _empty(rt: Runtime, stream: str) -> bool:
    return int(await rt.store.redis.xlen(stream)) == 0


async def test_a_4xx_dead_letters_at_once(redis_url: str, carrier: SimulatedCarrier, crm: StubCrm) -> None:
    crm.answer = lambda hit: (400, {})
    async with running(config(redis_url, carrier, crm, events=["started"])) as (_, api):
        await start_nps(api, A)

        async def dead() -> list[dict[str, Any]]:
            async with api.get("/v1/webhooks/dead", params={"webhook": "0", "limit": "10"}) as r:
                letters: list[dict[str, Any]] = (await r.json())["webhooks"][0]["dead"]
                return letters

        (letter,) = await eventually(dead)
        assert letter["attempts"] == 1 and letter["error"] == "HTTP 400: no"
        assert len(crm.hits) == 1


async def test_a_dispatcher_stopped_mid_delivery_sends_again_on_restart_with_the_same_id(
    redis_url: str, carrier: SimulatedCarrier, crm: StubCrm
) -> None:
    crm.hang = True
    cfg = config(redis_url, carrier, crm, events=["started"], timeout="30s", shutdown_timeout="300ms")
    async with running(cfg) as (rt, api):
        await start_nps(api, A)
        await wait_for(lambda: len(crm.hits) == 1)
    # The runtime left without an answer: the entry is still pending in the webhook's group.
    first = crm.hits[0].event_id
    crm.hang = False
    crm.answer = lambda hit: (200, {}) if hit is not crm.hits[0] else (499, {})  # the first never got through
    crm.release.set()
    async with running(cfg) as (rt, api):
        await wait_for(lambda: len(crm.delivered()) == 1)
        assert [h.event_id for h in crm.hits] == [first, first]

        async def acknowledged() -> bool:  # the acknowledgement follows the CRM's 200
            stream, group = keys.flow_events(shard(A)), keys.webhook_group(0, crm.url)
            return int((await rt.store.redis.xpending(stream, group))["pending"]) == 0

        assert await eventually(acknowledged)


async def test_events_trimmed_before_they_were_sent_are_counted_as_lost(
    redis_url: str, carrier: SimulatedCarrier, crm: StubCrm
) -> None:
    cfg = config(redis_url, carrier, crm, events=["started"])
    async with running(cfg, senders=False) as (rt, api):  # no sends: no message events after it stops
        await start_nps(api, B)
        await wait_for(lambda: len(crm.delivered()) == 1)  # the group has read B's p:fx:T up to its end
    # While it is down, five events of B come and three of them are trimmed away unsent.
    client = redis_client(redis_url)
    fx = keys.flow_events(shard(B))
    for i in range(5):
        e = {"t": "started", "c": B, "f": "nps", "run": f"{B}/{i}", "params": {}, "at": 1_767_225_600_000 + i}
        await client.xadd(fx, {"e": orjson.dumps(e)})
    await client.xtrim(fx, maxlen=2, approximate=False)
    await client.aclose()
    async with running(cfg) as (rt, _):
        await wait_for(lambda: len(crm.delivered()) == 3)
        assert [h.event["run"] for h in crm.delivered()[1:]] == [f"{B}/3", f"{B}/4"]
        assert sample(rt, "parley_webhook_events_lost_total", webhook="0") == 3


async def test_a_batch_is_a_json_array_and_keeps_each_contacts_order(
    redis_url: str, carrier: SimulatedCarrier, crm: StubCrm
) -> None:
    async with running(config(redis_url, carrier, crm, events=TYPES, batch=50)) as (rt, api):
        await start_nps(api, A, B)
        await asyncio.gather(answer(rt, carrier, A, "9", "Fast"), answer(rt, carrier, B, "10", "Kind"))

        def events() -> list[dict[str, Any]]:
            return [e for h in crm.delivered() for e in orjson.loads(h.body)]

        await wait_for(lambda: len(events()) == 2 * len(JOURNEY))
    for hit in crm.hits:
        verify(hit)
        body = orjson.loads(hit.body)
        assert isinstance(body, list) and hit.event_id == ",".join(e["id"] for e in body)
    for contact in (A, B):
        assert [e["type"] for e in events() if e["contact"] == contact] == JOURNEY


@pytest.mark.parametrize(
    ("hook", "key", "problem"),
    [
        ({"url": "ftp://crm.example.com/x"}, "crm.webhooks[0].url", "http:// or https://"),
        ({"url": "https://"}, "crm.webhooks[0].url", "http:// or https://"),
        ({"secret": "short"}, "crm.webhooks[0].secret", "at least 16"),
        ({"events": ["started", "clicked"]}, "crm.webhooks[0].events[1]", "unknown event type 'clicked'"),
        ({"batch": 0}, "crm.webhooks[0].batch", "1..1000"),
        ({"timeout": "soon"}, "crm.webhooks[0].timeout", "duration"),
        ({"colour": "red"}, "crm.webhooks[0].colour", "unknown key"),
    ],
)
def test_a_wrong_webhook_is_refused_naming_the_key(
    redis_url: str, hook: dict[str, Any], key: str, problem: str
) -> None:
    good = {"url": "https://crm.example.com/events", "secret": SECRET}
    with pytest.raises(ConfigError) as err:
        make_config(redis_url, crm={"webhooks": [{**good, **hook}]})
    assert err.value.key == key and problem in err.value.problem


def test_a_webhook_without_a_url_names_the_key(redis_url: str) -> None:
    with pytest.raises(ConfigError, match=r"crm\.webhooks\[0\]\.url: missing required key"):
        make_config(redis_url, crm={"webhooks": [{"secret": SECRET}]})


async def test_a_conversion_reaches_the_crm_with_its_own_type(
    redis_url: str, carrier: SimulatedCarrier, crm: StubCrm
) -> None:
    async with running(config(redis_url, carrier, crm, events=["started", "conversion"])) as (_rt, api):
        await start_nps(api, A)
        event = {"type": "purchase", "value": 42.5, "id": "order-1"}
        async with api.post(f"/v1/contacts/{A}/events", json=event) as r:
            assert r.status == 202
            start = (await r.json())["attributed"]["start"]
        await wait_for(lambda: len(crm.delivered()) == 2)
    hit = crm.delivered()[1]
    verify(hit)
    assert hit.event["type"] == "conversion" and hit.event["contact"] == A
    assert hit.event["conversion_type"] == "purchase" and hit.event["value"] == 42.5
    assert hit.event["flow"] == "nps" and hit.event["start"] == start


#: Names the webhook envelope uses (``m`` is a message event's id, sent as ``message_id``).
envelope = st.sampled_from(["id", "type", "contact", "flow", "message_id", "m", "conversion_type"])
field_names = st.one_of(envelope, st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["conversion", "result", "ended", "message"]),
    fields=st.dictionaries(field_names, st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5), max_size=8),
)
def test_a_payload_keeps_every_field_of_the_event(kind: str, fields: dict[str, Any]) -> None:
    """No field of a stored event is dropped or overwritten on its way to the CRM, whatever its
    name: one whose name the envelope uses is sent as ``<type>_<name>``."""
    from engine.crm.webhooks_http import payload

    fields = {k: v for k, v in fields.items() if k not in ("t", "c", "f", "run", "at")}
    stored = {"t": kind, "c": A, "f": "nps", "run": f"{A}/1", "at": 1767225600000, **fields}
    out = payload("1-0", orjson.dumps(stored))
    assert out["id"] == "1-0" and out["type"] == kind and out["contact"] == A
    own = {k: v for k, v in stored.items() if k not in ("t", "c", "f", "run", "at", "m")}
    assert len(out) == 6 + ("m" in stored) + len(own)
    values = sorted(map(repr, out.values()))
    for v in own.values():
        assert repr(v) in values
    if "m" in stored:
        assert out["message_id"] == stored["m"]
    if "type" in own and f"{kind}_type" not in own:
        assert out[f"{kind}_type"] == own["type"]


def test_event_ids_stay_unique_across_the_shards_streams() -> None:
    # Entry ids are unique within one stream: two shards' streams can both hold 1767225600000-0.
    assert event_id_of(0, b"1767225600000-0") == "1767225600000-0"  # as before the streams were per shard
    assert event_id_of(3, b"1767225600000-0") == "3/1767225600000-0"
