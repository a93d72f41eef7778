"""Single messages outside a flow (POST /v1/messages and its batch form), their status, and
cancelling (DELETE /v1/messages/{id}, DELETE /v1/starts/{id}), against a running engine and a
simulated provider on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import orjson
import pytest

from engine.app.runtime import Runtime
from engine.core import keys
from engine.core.clock import FakeClock
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import API_KEY, eventually, make_config, outbound, process_stream, serve
from tests.test_journeys import PROMO, import_contacts, received
from tests.test_sender import SECRET, Engine, engine

pytestmark = pytest.mark.redis_modes

ANN = "+447700900123"
RAJ = "+447700900456"


@pytest.fixture
async def e(
    redis_url: str, tmp_path: Path, carrier: SimulatedCarrier, clock: FakeClock
) -> AsyncIterator[Engine]:
    (tmp_path / "promo.yaml").write_text(PROMO)
    gw = {"carrier": {"type": "http", "url": carrier.url, "sender": "1", "webhook_secret": SECRET}}
    async for x in engine(redis_url, tmp_path, gw, clock):
        carrier.receipt_url = f"http://127.0.0.1:{x.rt.http_port}/v1/receipts/carrier"
        carrier.receipt_secret = SECRET
        yield x


async def send(e: Engine, body: dict[str, Any], status: int = 202, **kw: Any) -> dict[str, Any]:
    async with e.api.post("/v1/messages", json=body, **kw) as r:
        got: dict[str, Any] = await r.json()
        assert r.status == status, got
        return got


async def status_of(e: Engine, mid: str) -> dict[str, Any]:
    async with e.api.get(f"/v1/messages/{mid}") as r:
        got: dict[str, Any] = await r.json()
        assert r.status == 200, got
        return got


async def until_status(e: Engine, mid: str, wanted: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        got = await status_of(e, mid)
        return got if got["status"] == wanted else None

    result: dict[str, Any] = await eventually(probe, attempts=2000)
    return result


async def test_a_text_is_sent_and_its_status_follows_it_to_delivered(
    e: Engine, carrier: SimulatedCarrier
) -> None:
    carrier.receipts = "after"
    got = await send(e, {"to": "07700 900123", "text": "Your parcel arrives today"})
    assert got["status"] == "queued" and got["id"].startswith("msg-") and got["to"] == ANN
    msg = await carrier.next_message(ANN)
    assert msg.text == "Your parcel arrives today" and msg.id == got["id"]
    done = await until_status(e, got["id"], "delivered")
    assert [h["status"] for h in done["history"]] == ["queued", "sent", "delivered"]
    assert done["purpose"] == "service" and done["lane"] == "bulk"


async def test_a_template_sees_the_contacts_fields_and_the_given_fields(
    e: Engine, carrier: SimulatedCarrier
) -> None:
    await import_contacts(e, [{"number": ANN, "fields": {"first_name": "ann"}}])
    body = {"to": ANN, "template": "Hi {{ contact.first_name | first_name }}, code {{ fields.code }}",
            "fields": {"code": "A-1"}, "lane": "reply"}  # fmt: skip
    got = await send(e, body)
    assert (await carrier.next_message(ANN)).text == "Hi Ann, code A-1"
    assert (await until_status(e, got["id"], "sent"))["lane"] == "reply"


async def test_a_template_that_fails_for_the_contact_fails_the_message_and_says_why(
    e: Engine, carrier: SimulatedCarrier
) -> None:
    got = await send(e, {"to": RAJ, "template": "Hi {{ contact.first_name }}"})
    failed = await until_status(e, got["id"], "failed")
    assert "first_name" in failed["error"]
    assert not carrier.received


async def test_a_repeated_idempotency_key_answers_the_same_id_and_sends_once(
    e: Engine, carrier: SimulatedCarrier
) -> None:
    first = await send(e, {"to": ANN, "text": "once"}, headers={"Idempotency-Key": "order-1042"})
    again = await send(e, {"to": ANN, "text": "once", "idempotency_key": "order-1042"}, status=200)
    assert again["id"] == first["id"] and again["repeat"] is True and again["status"] == "queued"
    await until_status(e, first["id"], "sent")
    other = await send(e, {"to": RAJ, "text": "once"}, headers={"Idempotency-Key": "order-1042"})
    assert other["id"] != first["id"]  # keys are per recipient
    await until_status(e, other["id"], "sent")
    assert [m.to for m in carrier.received].count(ANN) == 1


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (
            {"path": f"/v1/contacts/{ANN}/consent", "body": {"status": "opted_out", "source": "api"}},
            "opted_out",
        ),
        ({"path": f"/v1/suppressions/{ANN}", "body": {"reason": "deceased"}}, "suppressed"),
    ],
)
async def test_the_gate_refuses_and_says_why(
    e: Engine, carrier: SimulatedCarrier, setup: dict[str, Any], reason: str
) -> None:
    await import_contacts(e, [{"number": ANN}])
    async with e.api.put(setup["path"], json=setup["body"]) as r:
        assert r.status in (200, 204), await r.text()
    got = await send(e, {"to": ANN, "text": "hello"})
    refused = await until_status(e, got["id"], "refused")
    assert refused["reason"] == reason
    assert not carrier.received


async def test_quiet_hours_defer_it_and_say_until_when(
    redis_url: str, tmp_path: Path, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    clock.advance(datetime(2030, 6, 3, 23, 0, tzinfo=UTC).timestamp() - clock.now_ms() / 1000)
    gw = {"carrier": {"type": "http", "url": carrier.url, "sender": "1"}}
    gov = {"send_window": "08:00-21:00", "quiet_jitter": "0s"}
    async for x in engine(redis_url, tmp_path, gw, clock, governance=gov):
        got = await send(x, {"to": ANN, "text": "tomorrow"})
        deferred = await until_status(x, got["id"], "deferred")
        assert deferred["reason"] == "deferred_until"
        assert deferred["deferred_until"] == "2030-06-04T07:00:00.000Z"  # 08:00 in London (BST)
        assert not carrier.received
        clock.advance(9 * 3600)
        assert x.rt.worker is not None
        await x.rt.worker.fire_timers()
        assert (await carrier.next_message(ANN)).text == "tomorrow"


async def test_send_at_schedules_it_and_a_cancel_stops_it(
    e: Engine, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    at = datetime.fromtimestamp(clock.now_ms() / 1000 + 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = await send(e, {"to": ANN, "text": "in an hour", "send_at": at})
    kept = await send(e, {"to": RAJ, "text": "also in an hour", "send_at": at, "idempotency_key": "k"})
    repeat = await send(
        e, {"to": RAJ, "text": "also in an hour", "send_at": at, "idempotency_key": "k"}, status=200
    )
    assert (repeat["id"], repeat["status"], repeat["send_at"]) == (kept["id"], "scheduled", kept["send_at"])
    assert later["status"] == "scheduled" and later["send_at"].startswith(at[:16])
    assert (await status_of(e, later["id"]))["status"] == "scheduled"
    async with e.api.delete(f"/v1/messages/{later['id']}") as r:
        assert r.status == 200 and (await r.json())["status"] == "cancelled"
    async with e.api.delete(f"/v1/messages/{later['id']}") as r:
        assert r.status == 200 and (await r.json())["already"] is True
    assert (await status_of(e, later["id"]))["status"] == "cancelled"
    clock.advance(3601)
    assert e.rt.worker is not None
    await e.rt.worker.fire_timers()
    await until_status(e, kept["id"], "sent")
    assert [m.to for m in carrier.received] == [RAJ]
    async with e.api.delete(f"/v1/messages/{kept['id']}") as r:
        assert r.status == 409 and (await r.json())["error"]["code"] == "not_cancellable"


async def test_validity_expires_a_message_not_sent_in_time(
    e: Engine, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    # Its first attempt fails (a retry is due later), whatever the machine's load: `down` and
    # resetting it after the test saw an attempt let a starved test see six failed attempts.
    carrier.fail_next = [503]
    got = await send(e, {"to": ANN, "text": "flash", "validity": "10m"})

    async def tried() -> bool:
        return carrier.attempts > 0

    await eventually(tried, attempts=2000)
    clock.advance(11 * 60)
    # The first attempt took it (handed), so the validity no longer applies to it: it is in
    # the provider's hands. A message still waiting when its validity runs out is expired:
    late = await send(e, {"to": RAJ, "text": "flash", "validity": "1s", "send_at": "2020-01-01T00:00:00Z"})
    assert late["status"] == "queued"
    assert (await until_status(e, got["id"], "sent"))["to"] == ANN


async def test_an_expired_message_is_not_sent(e: Engine, carrier: SimulatedCarrier, clock: FakeClock) -> None:
    at = datetime.fromtimestamp(clock.now_ms() / 1000 + 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    got = await send(e, {"to": ANN, "text": "too late", "send_at": at, "validity": "5m"})
    clock.advance(60 + 6 * 60)  # the timer fires after the validity ran out
    assert e.rt.worker is not None
    await e.rt.worker.fire_timers()
    done = await until_status(e, got["id"], "expired")
    assert done["history"][0]["status"] == "scheduled"
    assert not carrier.received


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "hi"}, "to"),
        ({"to": ANN}, "text"),
        ({"to": ANN, "text": "a", "template": "b"}, "text"),
        ({"to": ANN, "template": "{{ unclosed"}, "template"),
        ({"to": ANN, "text": "hi", "lane": "fast"}, "lane"),
        ({"to": ANN, "text": "hi", "gateway": "nope"}, "gateway"),
        ({"to": ANN, "text": "hi", "send_at": "tomorrow"}, "send_at"),
        ({"to": ANN, "text": "hi", "validity": "a while"}, "validity"),
        ({"to": ANN, "text": "hi", "validity": "10000000000000h"}, "validity"),
        ({"to": ANN, "text": "hi", "purpose": "spam"}, "purpose"),
        ({"to": ANN, "text": "hi", "priority": 4}, "priority"),
        ({"to": ANN, "text": "hi", "receipts": "all"}, "receipts"),
        ({"to": "not a number", "text": "hi"}, "to"),
    ],
)
async def test_a_bad_message_names_the_field_and_sends_nothing(
    e: Engine, carrier: SimulatedCarrier, body: dict[str, Any], field: str
) -> None:
    got = await send(e, body, status=422)
    assert got["error"]["message"].startswith(field), got
    assert not carrier.received


async def test_unknown_and_foreign_ids_are_404(e: Engine) -> None:
    for mid in ("msg-0-1-abc", "out-1-2-3-0", "msg-999-1-2"):
        async with e.api.get(f"/v1/messages/{mid}") as r:
            assert r.status == 404
        async with e.api.delete(f"/v1/messages/{mid}") as r:
            assert r.status == 404


async def test_a_batch_answers_a_line_per_row_and_bad_rows_stop_nothing(
    e: Engine, carrier: SimulatedCarrier
) -> None:
    rows = [
        {"to": ANN, "text": "one"},
        {"to": "nonsense", "text": "two"},
        {"to": RAJ, "template": "three {{ fields.n }}", "fields": {"n": 3}},
        {"to": RAJ},
    ]
    body = (
        b"\n".join(orjson.dumps(r) for r in rows[:2])
        + b"\nnot json\n"
        + b"\n".join(orjson.dumps(r) for r in rows[2:])
    )
    async with e.api.post(
        "/v1/messages:batch", data=body, headers={"Content-Type": "application/x-ndjson"}
    ) as r:
        assert r.status == 200 and r.content_type == "application/x-ndjson"
        lines = [orjson.loads(x) for x in (await r.read()).splitlines()]
    assert [x["row"] for x in lines] == [1, 2, 3, 4, 5]
    assert lines[0]["status"] == "queued" and lines[3]["status"] == "queued"
    assert lines[1]["error"]["field"] == "to" and lines[2]["error"]["field"] == "body"
    assert lines[4]["error"]["field"] == "text"
    assert set(await received(carrier, 2)) == {ANN, RAJ}
    async with e.api.post("/v1/messages:batch", json=[{"to": ANN, "text": "x"}, 5]) as r:
        lines = [orjson.loads(x) for x in (await r.read()).splitlines()]
    assert lines[0]["status"] == "queued" and lines[1]["error"]["field"] == "body"


async def test_cancelling_a_start_stops_every_delivery_still_waiting_and_counts_them(
    e: Engine, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    numbers = [f"+4477009{i:05d}" for i in range(12)]
    await import_contacts(e, [{"number": n, "fields": {"first_name": "C"}} for n in numbers])
    at = datetime.fromtimestamp(clock.now_ms() / 1000 + 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    async with e.api.post("/v1/flows/promo/start", json={"contacts": numbers, "send_at": at}) as r:
        started = await r.json()
        assert r.status == 202 and started["scheduled"] == 12
    async with e.api.delete(f"/v1/starts/{started['start']}") as r:
        got = await r.json()
        assert r.status == 200, got
    assert got["cancelled"] == 12 and got["scheduled"] == 12 and got["too_late"] == 0
    clock.advance(3601)
    assert e.rt.worker is not None
    await e.rt.worker.fire_timers()
    async with e.api.get(f"/v1/starts/{started['start']}") as r:
        view = await r.json()
    assert view["turns"]["skipped"] == {"cancelled": 12} and view["turns"]["started"] == 0
    assert not carrier.received
    async with e.api.get("/v1/starts", params={"status": "cancelled"}) as r:
        listed = await r.json()
    assert [s["start"] for s in listed["starts"]] == [started["start"]]  # the list knows it too
    async with e.api.delete("/v1/starts/st-0-nope") as r:
        assert r.status == 404


async def with_role(redis_url: str, tmp_path: Path, gw: dict[str, Any], role: str) -> AsyncIterator[Engine]:
    """An engine running the API and only ``role`` ("", worker or sender)."""
    cfg = make_config(redis_url, engine={"flows_dir": str(tmp_path)}, gateways=gw)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with (
        Runtime(cfg, worker=role == "worker", senders=role == "sender") as rt,
        aiohttp.ClientSession(f"http://127.0.0.1:{rt.http_port}", headers=headers) as api,
    ):
        yield Engine(rt, api)


@pytest.mark.parametrize(("role", "where"), [("", "queued"), ("worker", "in_lane")])
async def test_cancelling_a_start_stops_what_is_queued_or_waiting_in_the_lane(
    redis_url: str, tmp_path: Path, carrier: SimulatedCarrier, role: str, where: str
) -> None:
    """Without a worker the start's events wait on the streams; without a sender its messages
    wait in the lanes: the cancel finds them there, and nothing of it is ever sent."""
    (tmp_path / "promo.yaml").write_text(PROMO)
    gw = {"carrier": {"type": "http", "url": carrier.url, "sender": "1"}}
    numbers = [f"+4477009{i:05d}" for i in range(6)]
    async for x in with_role(redis_url, tmp_path, gw, role):
        await import_contacts(x, [{"number": n, "fields": {"first_name": "C"}} for n in numbers])
        async with x.api.post("/v1/flows/promo/start", json={"contacts": numbers}) as r:
            started = await r.json()
        sid = started["start"]
        if where == "in_lane":

            async def queued(rt: Runtime = x.rt) -> bool:
                return len(await outbound(rt, "carrier")) == 6

            await eventually(queued, attempts=2000)
        async with x.api.delete(f"/v1/starts/{sid}") as r:
            got = await r.json()
        assert got["cancelled"] == 6 and got[where] == 6, got
        if where == "queued":  # the turns that run later skip every one of them
            results = [r for n in numbers for r in await process_stream(x.rt, n)]
            assert set(results) == {"skipped_cancelled"}
    # A sender started now finds the cancelled messages in the lane and sends none of them.
    async for x in with_role(redis_url, tmp_path, gw, "sender"):
        if where == "in_lane":

            async def recorded(rt: Runtime = x.rt) -> bool:
                return len(await outbound(rt, "carrier")) == 0

            await eventually(recorded, attempts=2000)
            for n in numbers:
                s = keys.shard_of(n, x.rt.config.engine.shards)
                recs = [
                    orjson.loads(v)
                    for v in (await x.rt.store.redis.hgetall(keys.message_records(n, s))).values()
                ]
                assert [m["status"] for m in recs] == ["cancelled"]
    assert not carrier.received


async def test_the_crm_hears_what_became_of_a_single_message(
    redis_url: str, tmp_path: Path, carrier: SimulatedCarrier
) -> None:
    heard: list[dict[str, Any]] = []

    async def hook(request: aiohttp.web.Request) -> aiohttp.web.Response:
        heard.append(orjson.loads(await request.read()))
        return aiohttp.web.Response(status=204)

    async with serve(("POST", "/hooks", hook)) as base:
        crm = {"webhooks": [{"url": f"{base}/hooks", "secret": "s" * 32, "events": ["message"]}]}
        gw = {"carrier": {"type": "http", "url": carrier.url, "sender": "1"}}
        async for x in engine(redis_url, tmp_path, gw, crm=crm):
            await import_contacts(x, [{"number": RAJ}])
            async with x.api.put(f"/v1/suppressions/{RAJ}", json={"reason": "asked by phone"}) as r:
                assert r.status in (200, 204)
            sent = await send(x, {"to": ANN, "text": "hello"})
            refused = await send(x, {"to": RAJ, "text": "hello"})

            ids = {sent["id"], refused["id"]}

            async def both(ids: set[str] = ids) -> bool:
                return {e["message_id"] for e in heard} >= ids

            await eventually(both, attempts=4000)
    statuses = {(e["message_id"], e["status"]) for e in heard}
    assert (sent["id"], "sent") in statuses and (refused["id"], "blocked") in statuses
    assert all(e["type"] == "message" and e["flow"] is None for e in heard)


async def test_a_marketing_message_needs_the_marketing_opt_in_and_a_service_one_does_not(
    e: Engine, carrier: SimulatedCarrier
) -> None:
    """Consent by purpose on a single send: without a marketing opt-in an offer is refused with
    the reason, a service message still goes; after the opt-in the offer goes too."""
    await import_contacts(e, [{"number": ANN}])
    offer = await send(e, {"to": ANN, "text": "20% off today", "purpose": "marketing"})
    refused = await until_status(e, offer["id"], "refused")
    assert refused["reason"] == "no_marketing_consent"
    service = await send(e, {"to": ANN, "text": "Your order shipped"})
    await until_status(e, service["id"], "sent")
    body = {"status": "opted_in", "source": "web", "purpose": "marketing"}
    async with e.api.put(f"/v1/contacts/{ANN}/consent", json=body) as r:
        assert r.status == 200, await r.text()
    again = await send(e, {"to": ANN, "text": "20% off today", "purpose": "marketing"})
    await until_status(e, again["id"], "sent")
    assert [m.text for m in carrier.received] == ["Your order shipped", "20% off today"]


async def test_an_erased_contact_leaves_no_key_named_after_its_number(e: Engine) -> None:
    """A single send's idempotency key and hand-over key outlive the contact's erasure (they
    expire on their own), so neither may carry the number in its name."""
    await import_contacts(e, [{"number": ANN}])
    got = await send(e, {"to": ANN, "text": "hello", "validity": "1h"}, headers={"Idempotency-Key": "k-1"})
    await until_status(e, got["id"], "sent")
    async with e.api.delete(f"/v1/contacts/{ANN}") as r:
        assert r.status == 204
    names = [k async for k in e.rt.store.redis.scan_iter(match="p:*")]
    assert names and not [k for k in names if ANN.encode() in k]


async def test_an_erased_contact_leaves_no_value_holding_its_number(e: Engine, clock: FakeClock) -> None:
    """After erasure nothing in Redis holds the number but what the erasure documents it keeps
    (engine/crm/erasure.py: the provider-id map, until its window ends): a sent single message's
    and a scheduled one's owner records go with the rest, and both ids are unknown after."""
    await import_contacts(e, [{"number": ANN}, {"number": RAJ}])
    sent = await send(e, {"to": ANN, "text": "hello"})
    await until_status(e, sent["id"], "sent")
    at = datetime.fromtimestamp(clock.now_ms() / 1000 + 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = await send(e, {"to": ANN, "text": "in an hour", "send_at": at})
    other = await send(e, {"to": RAJ, "text": "hello Raj", "send_at": at})
    async with e.api.delete(f"/v1/contacts/{ANN}") as r:
        assert r.status == 204
    redis = e.rt.store.redis
    holding = []
    async for k in redis.scan_iter(match="p:*"):
        kind = (await redis.type(k)).decode()
        if kind == "string":
            values = [await redis.get(k)]
        elif kind == "hash":
            values = [b"%s=%s" % kv for kv in (await redis.hgetall(k)).items()]
        elif kind == "zset":
            values = await redis.zrange(k, 0, -1)
        elif kind == "list":
            values = await redis.lrange(k, 0, -1)
        elif kind == "set":
            values = list(await redis.smembers(k))
        else:
            values = [repr(fields).encode() for _, fields in await redis.xrange(k)]
        if any(ANN.encode() in (v or b"") for v in values):
            holding.append(k.decode())
    assert holding and all(k.startswith("p:pid:") for k in holding), holding
    for mid in (sent["id"], later["id"]):
        async with e.api.get(f"/v1/messages/{mid}") as r:
            assert r.status == 404, (mid, await r.text())
    assert (await status_of(e, other["id"]))["status"] == "scheduled"  # another's stays
