"""Campaigns in a running engine, on a fake clock: a contact write schedules its fire, a change
moves it, a clear or an erasure cancels it; the fire starts the flow through the gate with the
campaign in its outcome events; a recurring event schedules its next occurrence; a flow's
``set:`` reschedules in its turn; a campaign defined through the API backfills the contacts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import orjson
import pytest

from engine.app.runtime import Runtime
from engine.core import keys
from engine.core.clock import FakeClock
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import API_KEY, SHARDS, ClusterURL, eventually, make_config, run_parley, sync_redis_client
from tests.test_sender import Engine, engine

pytestmark = pytest.mark.redis_modes

REMIND = """
name: remind
start: s
nodes:
  s: {say: "See you at {{ contact.appointment_at | default('your appointment') }}", end: sent}
"""
RENEW = """
name: renew
start: s
nodes:
  s: {say: "Your plan renews today", end: sent}
"""
BOOK = """
name: book
start: s
nodes:
  s: {set: {appointment_at: "{{ params.when }}"}, say: "Booked", end: booked}
"""
CAMPAIGNS = """
campaign: appts
events:
  - id: before
    flow: remind
    field: appointment_at
    offset: -24h
"""
RENEWALS = """
campaign: renewals
events:
  - flow: renew
    field: renewal_day
    every: month
    at: "09:00"
"""
ANN = "+447700900123"


def ms(d: datetime) -> int:
    return int(d.timestamp() * 1000)


@pytest.fixture
async def e(
    redis_url: str, tmp_path: Path, carrier: SimulatedCarrier, clock: FakeClock
) -> AsyncIterator[Engine]:
    for name, text in (("remind", REMIND), ("renew", RENEW), ("book", BOOK)):
        (tmp_path / f"{name}.yaml").write_text(text)
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns" / "appts.yaml").write_text(CAMPAIGNS)
    (tmp_path / "campaigns" / "renewals.yaml").write_text(RENEWALS)
    async for x in engine(
        redis_url, tmp_path, {"carrier": {"type": "http", "url": carrier.url, "sender": "1"}}, clock
    ):
        yield x


async def put_contact(e: Engine, number: str, fields: dict[str, Any], **more: Any) -> None:
    async with e.api.put(f"/v1/contacts/{number}", json={"fields": fields, **more}) as r:
        assert r.status in (200, 201), await r.text()


async def fire_at(e: Engine, number: str, token: str) -> int | None:
    score = await e.rt.store.redis.zscore(
        keys.timers(keys.shard_of(number, SHARDS)), keys.timer_member(number, "k", token)
    )
    return None if score is None else int(score)


async def outcomes(e: Engine, number: str) -> list[dict[str, Any]]:
    entries = await e.rt.store.redis.xrange(keys.flow_events(keys.shard_of(number, SHARDS)))
    return [ev for _, f in entries if (ev := orjson.loads(f[b"e"]))["c"] == number]


def _at(clock: FakeClock, t_ms: int) -> None:
    clock.advance((t_ms - clock.now_ms()) / 1000)


async def test_a_write_schedules_a_change_moves_a_clear_and_an_erasure_cancel(e: Engine) -> None:
    await put_contact(e, ANN, {"appointment_at": "2026-01-10T15:00:00Z"})
    assert await fire_at(e, ANN, "appts:before") == ms(datetime(2026, 1, 9, 15, tzinfo=UTC))
    await put_contact(e, ANN, {"appointment_at": "2026-01-12T09:30"}, timezone="America/New_York")
    ny = ZoneInfo("America/New_York")
    assert await fire_at(e, ANN, "appts:before") == ms(datetime(2026, 1, 11, 9, 30, tzinfo=ny))
    await put_contact(e, ANN, {"first_name": "Ann"})
    assert await fire_at(e, ANN, "appts:before") is None
    await put_contact(e, ANN, {"appointment_at": "2025-12-01T10:00:00Z"})  # in the past: nothing
    assert await fire_at(e, ANN, "appts:before") is None
    await put_contact(e, ANN, {"appointment_at": "2026-02-01", "renewal_day": 31})
    assert await fire_at(e, ANN, "renewals:renew") == ms(
        datetime(2026, 1, 31, 9, tzinfo=ZoneInfo("Europe/London"))
    )
    async with e.api.delete(f"/v1/contacts/{ANN}") as r:
        assert r.status == 204
    assert await fire_at(e, ANN, "appts:before") is None and await fire_at(e, ANN, "renewals:renew") is None


async def test_an_import_schedules_every_row(e: Engine) -> None:
    rows = [{"number": f"+4477009001{i:02d}", "fields": {"appointment_at": f"2026-02-{i + 1:02d}T12:00:00Z"}}
            for i in range(20)]  # fmt: skip
    body = b"\n".join(orjson.dumps(r) for r in rows)
    async with e.api.post(
        "/v1/contacts:import", data=body, headers={"Content-Type": "application/x-ndjson"}
    ) as r:
        assert r.status == 200, await r.text()
    for i, row in enumerate(rows):
        assert (
            await fire_at(e, row["number"], "appts:before")
            == ms(datetime(2026, 2, i + 1, 12, tzinfo=UTC)) - 86_400_000
        )


async def test_the_fire_starts_the_flow_through_the_gate_with_the_campaign_in_its_outcomes(
    e: Engine, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    bob = "+447700900456"
    await put_contact(e, ANN, {"appointment_at": "2026-01-10T15:00:00Z"})
    await put_contact(e, bob, {"appointment_at": "2026-01-10T15:00:00Z"})
    async with e.api.put(f"/v1/suppressions/{bob}", json={"reason": "complaint", "source": "carrier"}) as r:
        assert r.status in (200, 201, 204), await r.text()
    due = await fire_at(e, ANN, "appts:before")
    assert due is not None
    _at(clock, due - 1000)
    assert e.rt.worker is not None
    await e.rt.worker.fire_timers()
    assert carrier.received == []  # not yet
    _at(clock, due)
    await e.rt.worker.fire_timers()
    assert (await carrier.next_message(ANN)).text == "See you at 2026-01-10T15:00:00Z"

    async def skipped() -> bool:
        return any(o["t"] == "skipped" for o in await outcomes(e, bob))

    await eventually(skipped, attempts=2000)
    started = [o for o in await outcomes(e, ANN) if o["t"] == "started"]
    assert [(o["f"], o["campaign"], o["campaign_event"]) for o in started] == [("remind", "appts", "before")]
    (skip,) = [o for o in await outcomes(e, bob) if o["t"] == "skipped"]
    assert (skip["campaign"], skip["reason"]) == ("appts", "suppressed")
    assert await fire_at(e, ANN, "appts:before") is None  # a one-off: nothing after
    assert bob not in {m.to for m in carrier.received}


async def test_a_recurring_event_schedules_its_next_occurrence_when_it_fires(
    e: Engine, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    ldn = ZoneInfo("Europe/London")
    await put_contact(e, ANN, {"renewal_day": 31})
    first = await fire_at(e, ANN, "renewals:renew")
    assert first == ms(datetime(2026, 1, 31, 9, tzinfo=ldn))
    assert e.rt.worker is not None
    for expected in (datetime(2026, 2, 28, 9, tzinfo=ldn), datetime(2026, 3, 31, 9, tzinfo=ldn)):
        _at(clock, first)
        await e.rt.worker.fire_timers()
        assert (await carrier.next_message(ANN)).text == "Your plan renews today"

        async def moved(was: int = first) -> bool:
            return (await fire_at(e, ANN, "renewals:renew") or 0) > was

        await eventually(moved, attempts=2000)
        nxt = await fire_at(e, ANN, "renewals:renew")
        assert nxt == ms(expected)  # March 31 at 09:00 is summer time: still 09:00 local
        first = nxt


async def test_a_flow_that_sets_the_date_schedules_it_in_its_turn(e: Engine, clock: FakeClock) -> None:
    await put_contact(e, ANN, {"first_name": "Ann"})
    async with e.api.post(
        "/v1/flows/book/start", json={"contacts": [ANN], "params": {"when": "2026-01-20T10:00:00Z"}}
    ) as r:
        assert r.status == 202, await r.text()

    async def scheduled() -> bool:
        return await fire_at(e, ANN, "appts:before") == ms(datetime(2026, 1, 19, 10, tzinfo=UTC))

    await eventually(scheduled, attempts=2000)


async def test_a_campaign_put_through_the_api_backfills_existing_contacts_and_fires(
    e: Engine, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    for i in range(5):
        await put_contact(e, f"+44770090020{i}", {"delivered_at": f"2026-01-0{i + 2}"})
    body = {"description": "Ask how the delivery went", "events": [
        {"id": "ask", "flow": "renew", "field": "delivered_at", "offset": "3d", "at": "10:00"}]}  # fmt: skip
    async with e.api.put("/v1/campaigns/feedback", json=body) as r:
        assert r.status == 201, await r.text()
        got = await r.json()
    assert got["source"] == "api" and got["events"][0] == body["events"][0]  # type: ignore[index]

    async def done() -> bool:
        async with e.api.get("/v1/campaigns/feedback") as r:
            b = (await r.json())["backfill"]
            return b is not None and b["state"] == "done"

    await eventually(done, attempts=2000)
    ldn = ZoneInfo("Europe/London")
    for i in range(5):
        assert await fire_at(e, f"+44770090020{i}", "feedback:ask") == ms(
            datetime(2026, 1, i + 5, 10, tzinfo=ldn)
        )
    async with e.api.get("/v1/campaigns") as r:
        names = [c["name"] for c in (await r.json())["campaigns"]]
    assert names == ["appts", "feedback", "renewals"]
    async with e.api.put("/v1/campaigns/feedback", json=body) as r:
        assert r.status == 200
    # Deleted: its timers fire into nothing.
    async with e.api.delete("/v1/campaigns/feedback") as r:
        assert r.status == 204
    assert e.rt.worker is not None
    _at(clock, ms(datetime(2026, 1, 5, 10, tzinfo=ldn)))
    assert await e.rt.worker.fire_timers() == 1

    async def gone() -> bool:
        return await fire_at(e, "+447700900200", "feedback:ask") is None

    await eventually(gone)
    assert not any(o["t"] in ("started", "skipped") for o in await outcomes(e, "+447700900200"))
    assert carrier.received == []


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("PUT", "/v1/campaigns/x", {"events": []}, 422, "events"),
        (
            "PUT",
            "/v1/campaigns/x",
            {"events": [{"flow": "renew", "field": "d", "offset": "soon"}]},
            422,
            "events[0].offset",
        ),
        (
            "PUT",
            "/v1/campaigns/x",
            {"events": [{"flow": "nope", "field": "d", "offset": "1d"}]},
            404,
            "events[0].flow: no flow 'nope' is loaded",
        ),
        (
            "PUT",
            "/v1/campaigns/x",
            {"events": [{"flow": "renew", "field": "d", "offset": "5h", "at": "09:00"}]},
            422,
            "events[0].offset: with at",
        ),
        ("PUT", "/v1/campaigns/Bad%20Name", {"events": [{"flow": "renew", "field": "d"}]}, 422, "name"),
        ("PUT", "/v1/campaigns/appts", {"events": [{"flow": "renew", "field": "d"}]}, 409, "edit the file"),
        ("DELETE", "/v1/campaigns/appts", None, 409, "remove the file"),
        ("DELETE", "/v1/campaigns/none", None, 404, "no campaign"),
        ("GET", "/v1/campaigns/none", None, 404, "no campaign"),
    ],
)
async def test_api_refusals_name_the_field(
    e: Engine, method: str, path: str, body: Any, status: int, says: str
) -> None:
    async with e.api.request(method, path, json=body) as r:
        got = await r.json()
        assert r.status == status, got
        assert says in got["error"]["message"], got


def test_the_cli_import_schedules_the_rows_of_a_campaign_file(redis_url: str, tmp_path: Path) -> None:
    if isinstance(redis_url, ClusterURL):
        pytest.skip("the CLI is exercised on the single node")
    (tmp_path / "remind.yaml").write_text(REMIND)
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns" / "appts.yaml").write_text(CAMPAIGNS)
    path = tmp_path / "rows.jsonl"
    path.write_bytes(
        orjson.dumps({"number": ANN, "fields": {"appointment_at": "2031-05-02T08:00:00Z"}}) + b"\n"
    )
    proc = run_parley(
        "contacts", "import", str(path),
        env={"PARLEY_REDIS_URL": redis_url, "PARLEY_ENGINE_FLOWS_DIR": str(tmp_path), "PARLEY_ENGINE_SHARDS": str(SHARDS)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    client = sync_redis_client(redis_url)
    member = keys.timer_member(ANN, "k", "appts:before")
    assert client.zscore(keys.timers(keys.shard_of(ANN, SHARDS)), member) == ms(
        datetime(2031, 5, 1, 8, tzinfo=UTC)
    )


async def test_a_fire_found_more_than_a_day_late_is_skipped_not_sent(
    e: Engine, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    await put_contact(e, ANN, {"appointment_at": "2026-01-10T15:00:00Z"})
    _at(clock, ms(datetime(2026, 1, 10, 16, tzinfo=UTC)))  # the workers were away for 25 hours
    assert e.rt.worker is not None
    assert await e.rt.worker.fire_timers() == 1

    async def skipped() -> list[dict[str, Any]]:
        return [o for o in await outcomes(e, ANN) if o["t"] == "skipped"]

    (skip,) = await eventually(skipped, attempts=2000)
    assert (skip["campaign"], skip["reason"], skip["f"]) == ("appts", "late", "remind")
    assert carrier.received == []


async def test_a_fire_in_quiet_hours_is_deferred_and_then_sent_with_its_campaign(
    redis_url: str, tmp_path: Path, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    (tmp_path / "remind.yaml").write_text(REMIND)
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns" / "appts.yaml").write_text(CAMPAIGNS)
    gw = {"carrier": {"type": "http", "url": carrier.url, "sender": "1"}}
    quiet = {"send_window": "09:00-20:00", "quiet_jitter": "0s"}
    async for e in engine(redis_url, tmp_path, gw, clock, governance=quiet):
        await put_contact(e, ANN, {"appointment_at": "2026-01-10T07:00:00Z"})  # fires at 07:00 London
        _at(clock, ms(datetime(2026, 1, 9, 7, tzinfo=UTC)))
        assert e.rt.worker is not None
        await e.rt.worker.fire_timers()

        async def deferred(e: Engine = e) -> list[dict[str, Any]]:
            return [o for o in await outcomes(e, ANN) if o["t"] == "deferred"]

        (d,) = await eventually(deferred, attempts=2000)
        assert d["campaign"] == "appts" and carrier.received == []
        _at(clock, ms(datetime(2026, 1, 9, 9, tzinfo=UTC)))
        await e.rt.worker.fire_timers()
        assert (await carrier.next_message(ANN)).text.startswith("See you at")
        started = [o for o in await outcomes(e, ANN) if o["t"] == "started"]
        assert [o["campaign"] for o in started] == ["appts"]


async def test_campaign_files_backfill_the_contacts_at_start_and_on_a_reload(
    redis_url: str, tmp_path: Path, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    (tmp_path / "remind.yaml").write_text(REMIND)
    gw = {"carrier": {"type": "http", "url": carrier.url, "sender": "1"}}
    numbers = [f"+44770090030{i}" for i in range(4)]
    async for e in engine(redis_url, tmp_path, gw, clock):
        for n in numbers:
            await put_contact(e, n, {"appointment_at": "2026-03-01T12:00:00Z"})
        assert all([await fire_at(e, n, "appts:before") is None for n in numbers])
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns" / "appts.yaml").write_text(CAMPAIGNS)
    async for e in engine(redis_url, tmp_path, gw, clock):

        async def backfilled(hours: int = 24, e: Engine = e) -> bool:
            want = ms(datetime(2026, 3, 1, 12, tzinfo=UTC)) - hours * 3_600_000
            return all([await fire_at(e, n, "appts:before") == want for n in numbers])

        await eventually(backfilled, attempts=2000)
        (tmp_path / "campaigns" / "appts.yaml").write_text(CAMPAIGNS.replace("-24h", "-48h"))
        async with e.api.post("/v1/flows:reload") as r:
            assert r.status == 200, await r.text()
        await eventually(lambda: backfilled(48), attempts=2000)
        (tmp_path / "campaigns" / "appts.yaml").write_text(CAMPAIGNS.replace("-24h", "soon"))
        async with e.api.post("/v1/flows:reload") as r:
            got = await r.json()
            assert r.status == 422 and "appts.yaml:7: campaign 'appts'" in got["error"]["problems"][0], got
        assert e.rt.campaigns.campaigns["appts"].events[0].offset_s == -48 * 3600  # unchanged


ASK = """
name: ask
expire_after: 7d
start: q
nodes:
  q: {say: "Coming?", wait: {save: answer}, default: bye}
  bye: {say: "Thanks", end: answered}
"""


@pytest.mark.parametrize("interrupt", [False, True])
async def test_a_fire_for_a_contact_in_a_conversation_is_skipped_unless_it_interrupts(
    redis_url: str, tmp_path: Path, carrier: SimulatedCarrier, clock: FakeClock, interrupt: bool
) -> None:
    (tmp_path / "remind.yaml").write_text(REMIND)
    (tmp_path / "ask.yaml").write_text(ASK)
    (tmp_path / "campaigns").mkdir()
    text = CAMPAIGNS + ("    interrupt: true\n" if interrupt else "")
    (tmp_path / "campaigns" / "appts.yaml").write_text(text)
    gw = {"carrier": {"type": "http", "url": carrier.url, "sender": "1"}}
    async for e in engine(redis_url, tmp_path, gw, clock):
        await put_contact(e, ANN, {"appointment_at": "2026-01-02T15:00:00Z"})
        async with e.api.post("/v1/flows/ask/start", json={"contacts": [ANN]}) as r:
            assert r.status == 202
        assert (await carrier.next_message(ANN)).text == "Coming?"
        _at(clock, ms(datetime(2026, 1, 1, 15, tzinfo=UTC)))
        assert e.rt.worker is not None
        await e.rt.worker.fire_timers()

        async def judged(e: Engine = e) -> list[dict[str, Any]]:
            return [o for o in await outcomes(e, ANN) if o.get("campaign")]

        (o,) = await eventually(judged, attempts=2000)
        if interrupt:
            assert o["t"] == "started" and (await carrier.next_message(ANN)).text.startswith("See you at")
            ended = [x for x in await outcomes(e, ANN) if x["t"] == "ended"]
            assert [(x["f"], x["outcome"]) for x in ended] == [("ask", "interrupted"), ("remind", "sent")]
        else:
            assert (o["t"], o["reason"]) == ("skipped", "active")


async def test_a_campaign_put_on_one_api_process_is_known_to_another_at_once(
    e: Engine, redis_url: str, tmp_path: Path, clock: FakeClock
) -> None:
    other_cfg = make_config(redis_url, engine={"flows_dir": str(tmp_path)})
    async with (
        Runtime(other_cfg, clock=clock, worker=False, senders=False) as other,
        aiohttp.ClientSession(
            f"http://127.0.0.1:{other.http_port}", headers={"Authorization": f"Bearer {API_KEY}"}
        ) as api,
    ):
        body = {"events": [{"flow": "renew", "field": "renewal_day", "every": "month", "at": "08:00"}]}
        async with api.put("/v1/campaigns/monthly", json=body) as r:
            assert r.status == 201, await r.text()
        async with e.api.get("/v1/campaigns/monthly") as r:  # the first process, at once
            assert r.status == 200 and (await r.json())["source"] == "api"
        assert e.rt.campaigns.get("monthly") is not None  # so its turns know it
