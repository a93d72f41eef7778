"""Journeys: a start for an audience, at a local time, split into arms and a holdout; its status;
conversions from the CRM attributed to it; the report's lift against a hand computation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from engine.core import keys
from engine.core.clock import FakeClock
from engine.crm import reports
from engine.crm.journeys import Arm, Split
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import eventually
from tests.test_sender import Engine, engine

PROMO = """
name: promo
start: offer
nodes:
  offer: {say: "{{ params.variant | default('plain') }} offer for {{ contact.first_name | default('you') }}", end: sent}
"""


def _at(clock: FakeClock, unix_s: float) -> None:
    clock.advance(unix_s - clock.now_ms() / 1000)


def number(i: int) -> str:
    return f"+4477009{i:05d}"


@pytest.fixture
async def e(
    redis_url: str, tmp_path: Path, carrier: SimulatedCarrier, clock: FakeClock
) -> AsyncIterator[Engine]:
    (tmp_path / "promo.yaml").write_text(PROMO)
    async for x in engine(
        redis_url, tmp_path, {"carrier": {"type": "http", "url": carrier.url, "sender": "1"}}, clock
    ):
        yield x


async def import_contacts(e: Engine, rows: list[dict[str, Any]]) -> None:
    body = b"\n".join(orjson.dumps(r) for r in rows)
    async with e.api.post(
        "/v1/contacts:import", data=body, headers={"Content-Type": "application/x-ndjson"}
    ) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["failed"] == 0


async def start(e: Engine, body: dict[str, Any], status: int = 202) -> dict[str, Any]:
    async with e.api.post("/v1/flows/promo/start", json=body) as r:
        got: dict[str, Any] = await r.json()
        assert r.status == status, got
        return got


async def received(carrier: SimulatedCarrier, n: int) -> dict[str, str]:
    async def enough() -> bool:
        return len(carrier.received) >= n

    await eventually(enough, attempts=2000)
    return {m.to: m.text for m in carrier.received}


async def test_an_audience_gets_the_journey_and_nobody_else(e: Engine, carrier: SimulatedCarrier) -> None:
    rows = [{"number": number(i), "fields": {"first_name": f"C{i}", "city": "Leeds" if i % 3 == 0 else "York",
                                             "orders": i}} for i in range(30)]  # fmt: skip
    await import_contacts(e, rows)
    got = await start(e, {"audience": [{"field": "contact.city", "equals": "leeds"},
                                      {"field": "contact.orders", "gte": 10}]})  # fmt: skip
    leeds = {number(i) for i in range(30) if i % 3 == 0 and i >= 10}
    assert got["requested"] == len(leeds) == 6 and got["queued"] == 6
    texts = await received(carrier, 6)
    assert set(texts) == leeds and texts[number(12)] == "plain offer for C12"
    status = await _status(e, got["start"], started=6)
    assert status["requested"] == 6 and status["flow"] == "promo"


async def _status(e: Engine, sid: str, **want: int) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        async with e.api.get(f"/v1/starts/{sid}") as r:
            body: dict[str, Any] = await r.json()
        return body if all(body["turns"][k] == v for k, v in want.items()) else None

    result: dict[str, Any] = await eventually(probe, attempts=2000)
    return result


async def test_arms_and_holdout_are_deterministic_kept_and_the_holdout_gets_nothing(
    e: Engine, carrier: SimulatedCarrier
) -> None:
    numbers = [number(i) for i in range(200)]
    await import_contacts(e, [{"number": n, "fields": {"first_name": "Sam"}} for n in numbers])
    body = {"contacts": numbers, "holdout": 20, "experiment": "xmas",
            "arms": [{"name": "a", "params": {"variant": "Gold"}}, {"name": "b", "weight": 1}]}  # fmt: skip
    got = await start(e, body)
    split = Split("xmas", 0.2, (Arm("a"), Arm("b")))
    expected = {n: split.assign(n) for n in numbers}
    want = {arm: sum(1 for a in expected.values() if a == arm) for arm in ("holdout", "a", "b")}
    assert got["arms"] == want and got["skipped_counts"] == {"holdout": want["holdout"]}
    assert 25 <= want["holdout"] <= 55  # about 20% of 200
    texts = await received(carrier, want["a"] + want["b"])
    for n, arm in expected.items():
        assert (
            texts.get(n) == {"holdout": None, "a": "Gold offer for Sam", "b": "plain offer for Sam"}[arm]
        ), n
    # The same contacts started again with other weights keep their arms.
    again = await start(e, {**body, "holdout": 50, "interrupt": True})
    assert again["arms"] == want
    stored = await e.rt.store.redis.hgetall(keys.assignments("xmas"))
    assert {k.decode(): v.decode() for k, v in stored.items()} == expected


async def test_conversions_are_attributed_and_the_report_gives_the_lift_with_its_interval(
    e: Engine, carrier: SimulatedCarrier
) -> None:
    numbers = [number(i) for i in range(300)]
    await import_contacts(e, [{"number": n} for n in numbers])
    got = await start(e, {"contacts": numbers, "holdout": 30, "arms": [{"name": "sms"}]})
    split = Split("promo", 0.3, (Arm("sms"),))
    arm = {n: split.assign(n) for n in numbers}
    treated = [n for n in numbers if arm[n] == "sms"]
    held = [n for n in numbers if arm[n] == "holdout"]
    # The CRM reports purchases: every 4th treated contact, every 10th held-out one.
    buyers = treated[::4] + held[::10]
    for i, n in enumerate(buyers):
        async with e.api.post(
            f"/v1/contacts/{n}/events", json={"type": "purchase", "value": 10, "id": f"o-{i}"}
        ) as r:
            assert r.status == 202
            attributed = (await r.json())["attributed"]
            assert attributed == {
                "flow": "promo",
                "start": got["start"],
                "experiment": "promo",
                "arm": arm[n],
            }
    async with e.api.post(f"/v1/contacts/{buyers[0]}/events", json={"type": "purchase", "id": "o-0"}) as r:
        assert r.status == 200 and (await r.json())["status"] == "duplicate"  # a resend counts once
    await received(carrier, len(treated))
    async with e.api.get("/v1/flows/promo/report") as r:
        rows = (await r.json())["experiments"]["promo"]["arms"]
    # By hand.
    n1, c1, n0, c0 = len(treated), len(treated[::4]), len(held), len(held[::10])
    p1, p0 = c1 / n1, c0 / n0
    assert rows["holdout"] == {"assigned": n0, "started": 0, "converted": c0, "conversion_rate": round(p0, 4),
                               "value": 10 * c0}  # fmt: skip
    assert rows["sms"]["assigned"] == n1 and rows["sms"]["started"] == n1 and rows["sms"]["converted"] == c1
    assert rows["sms"]["lift"] == round(p1 - p0, 4)
    # Newcombe's interval (its arithmetic is checked against his worked examples in test_reports).
    assert rows["sms"]["lift_ci95"] == [round(x, 4) for x in reports.newcombe(c1, n1, c0, n0)]
    assert rows["sms"]["relative_lift"] == round((p1 - p0) / p0, 4)
    low, high = rows["sms"]["lift_ci95"]
    small = min(c1, n1 - c1, c0, n0 - c0) < reports.MIN_EVENTS
    assert rows["sms"]["small_sample"] is small
    assert rows["sms"]["conclusive"] is (not small and (low > 0 or high < 0))


async def test_a_conversion_outside_the_window_is_recorded_unattributed(
    e: Engine, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    await import_contacts(e, [{"number": number(1)}])
    await start(e, {"contacts": [number(1)]})
    clock.advance(8 * 86400)  # engine.attribution_window is 7 days
    async with e.api.post(f"/v1/contacts/{number(1)}/events", json={"type": "meeting_set"}) as r:
        assert r.status == 202 and (await r.json())["attributed"] is None


async def test_send_at_without_a_zone_is_each_contacts_local_time(
    e: Engine, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    ny, london = number(1), number(2)
    await import_contacts(e, [{"number": ny, "timezone": "America/New_York"}, {"number": london}])
    local = datetime(2030, 6, 3, 10, 0)  # 10:00 where each contact is
    _at(clock, datetime(2030, 6, 3, 8, 0, tzinfo=UTC).timestamp())
    got = await start(e, {"contacts": [ny, london], "send_at": local.isoformat()})
    assert got["scheduled"] == 2 and got["queued"] == 0
    due = {n: int(local.replace(tzinfo=ZoneInfo(z)).timestamp() * 1000)
           for n, z in ((ny, "America/New_York"), (london, "Europe/London"))}  # fmt: skip
    shard_timers = {n: await e.rt.store.redis.zrange(keys.timers(keys.shard_of(n, 4)), 0, -1, withscores=True)
                    for n in due}  # fmt: skip
    for n, ts in shard_timers.items():
        assert [int(s) for m, s in ts if m.startswith(n.encode())] == [due[n]]
    assert e.rt.worker is not None
    _at(clock, due[london] / 1000)  # 10:00 in London, 05:00 in New York
    await e.rt.worker.fire_timers()
    assert set(await received(carrier, 1)) == {london}
    _at(clock, due[ny] / 1000)
    await e.rt.worker.fire_timers()
    assert set(await received(carrier, 2)) == {london, ny}
    await _status(e, got["start"], started=2)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "contacts"),
        ({"contacts": ["+447700900001"], "audience": []}, "contacts"),
        ({"audience": [{"field": "results.x", "equals": 1}]}, "audience[0].field"),
        ({"audience": [{"field": "contact.x", "between": 1}]}, "audience[0]"),
        ({"contacts": ["+447700900001"], "holdout": 100}, "holdout"),
        ({"contacts": ["+447700900001"], "arms": [{"name": "holdout"}]}, "arms[0].name"),
        ({"contacts": ["+447700900001"], "arms": [{"name": "a", "weight": 0}]}, "arms[0].weight"),
        ({"contacts": ["+447700900001"], "send_at": "next tuesday"}, "send_at"),
        ({"contacts": ["+447700900001"], "params": {"_start": {}}}, "params"),
    ],
)
async def test_a_bad_start_names_the_field_and_starts_nothing(
    e: Engine, carrier: SimulatedCarrier, body: dict[str, Any], field: str
) -> None:
    await import_contacts(e, [{"number": "+447700900001"}])
    got = await start(e, body, status=422)
    assert got["error"]["message"].startswith(field), got
    assert await e.rt.store.redis.xlen(keys.inbound_stream(keys.shard_of("+447700900001", 4))) == 0
