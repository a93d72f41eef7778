"""Campaigns, the language and the dates (engine/flows/campaigns.py): fire times across zones and
clock changes (hypothesis), recurring occurrences, what a field change or a clear schedules,
file:line errors for bad campaign files; and campaigns.lua's contract on a real Redis."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core import keys
from engine.core.errors import FlowErrors
from engine.core.scripts.campaigns import CampaignTimersArgs, CampaignTimersReply
from engine.flows.campaigns import (
    LATE_MS,
    CampaignBook,
    CampaignEvent,
    Problems,
    load_dir,
    load_file,
    next_fire,
    parse,
)
from tests.conftest import redis_client, run_parley, sync_redis_client

ZONES = ["Europe/London", "America/New_York", "Australia/Sydney", "Asia/Kolkata", "Pacific/Chatham", "UTC"]
NUMBER = "+447700900123"


def ms(d: datetime) -> int:
    return int(d.timestamp() * 1000)


def local(t: int, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(t / 1000, UTC).astimezone(zone)


def exists(day: date, at: time, zone: ZoneInfo) -> bool:
    """Whether ``at`` is a wall-clock time ``day`` has in ``zone`` (not skipped by a clock change)."""
    d = datetime.combine(day, at, zone)
    return d.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == d.replace(tzinfo=None)


days = st.dates(min_value=date(2025, 1, 1), max_value=date(2032, 12, 31))
clock_times = st.times().map(lambda t: t.replace(second=0, microsecond=0))
zones = st.sampled_from(ZONES)


# -- fire times --------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(day=days, at=clock_times, zone=zones, offset_days=st.integers(-30, 30), now_day=days)
def test_a_fire_at_a_time_of_day_is_that_local_time_offset_days_from_the_field(
    day: date, at: time, zone: str, offset_days: int, now_day: date
) -> None:
    z = ZoneInfo(zone)
    ev = CampaignEvent("e", "f", "due", offset_days * 86400, at)
    now = ms(datetime.combine(now_day, time(12), UTC))
    got = next_fire(ev, day.isoformat(), z, now)
    target = day + timedelta(days=offset_days)
    fire_at = datetime.combine(target, at, z)
    if ms(fire_at) <= now and ms(fire_at.astimezone(UTC).astimezone(z)) <= now:
        assert got is None  # never scheduled in the past
        return
    assert got is not None and got > now
    seen = local(got, z)
    assert seen.date() == target
    if exists(target, at, z):
        assert seen.time() == at
    else:  # skipped by a clock change: the same instant the clock would have shown, moved on
        assert seen.time() > at


@settings(max_examples=300, deadline=None)
@given(
    instant=st.datetimes(
        min_value=datetime(2025, 1, 1), max_value=datetime(2032, 12, 31), timezones=st.just(UTC)
    ),
    offset_min=st.integers(-60 * 24 * 60, 60 * 24 * 60),
    zone=zones,
)
def test_a_fire_without_a_time_of_day_is_the_elapsed_offset_from_the_field(
    instant: datetime, offset_min: int, zone: str
) -> None:
    ev = CampaignEvent("e", "f", "due", offset_min * 60)
    instant = instant.replace(microsecond=0)
    now = ms(instant) - 90 * 86_400_000  # long before: the fire is ahead
    got = next_fire(ev, instant.isoformat().replace("+00:00", "Z"), ZoneInfo(zone), now)
    assert got == ms(instant) + offset_min * 60_000


def test_a_time_without_a_zone_is_the_contacts_wall_clock() -> None:
    ev = CampaignEvent("e", "f", "due", -86400)
    now = ms(datetime(2026, 1, 1, tzinfo=UTC))
    ny, ldn = ZoneInfo("America/New_York"), ZoneInfo("Europe/London")
    assert next_fire(ev, "2026-03-10T14:30", ny, now) == ms(datetime(2026, 3, 9, 14, 30, tzinfo=ny))
    assert next_fire(ev, "2026-03-10T14:30", ldn, now) == ms(datetime(2026, 3, 9, 14, 30, tzinfo=ldn))


def test_across_the_spring_clock_change_a_day_offset_keeps_the_time_of_day() -> None:
    # London moves to summer time on 29 March 2026: "2 days before, at 09:00" is 09:00 BST.
    ev = CampaignEvent("e", "f", "due", -2 * 86400, time(9))
    z = ZoneInfo("Europe/London")
    got = next_fire(ev, "2026-03-31", z, ms(datetime(2026, 3, 1, tzinfo=UTC)))
    assert got == ms(datetime(2026, 3, 29, 8, 0, tzinfo=UTC))
    # Without one, -48h is elapsed time from local midnight of the 31st (23:00 UTC on the 30th):
    # 23:00 on the 28th, which London shows as 23:00 GMT, not midnight.
    ev = CampaignEvent("e", "f", "due", -48 * 3600)
    got = next_fire(ev, "2026-03-31", z, ms(datetime(2026, 3, 1, tzinfo=UTC)))
    assert got == ms(datetime(2026, 3, 30, 23, 0, tzinfo=UTC)) - 48 * 3_600_000


@settings(max_examples=200, deadline=None)
@given(dom=st.integers(1, 31), at=clock_times, zone=zones, now_day=days)
def test_every_month_fires_on_that_day_or_the_months_last_and_then_the_next_month(
    dom: int, at: time, zone: str, now_day: date
) -> None:
    z = ZoneInfo(zone)
    ev = CampaignEvent("e", "f", "renewal_day", 0, at, "month")
    now = ms(datetime.combine(now_day, time(0), z))
    first = next_fire(ev, dom, z, now)
    assert first is not None and first > now
    second = next_fire(ev, dom, z, first)
    assert second is not None and second > first
    a, b = local(first, z).date(), local(second, z).date()
    for d in (a, b):
        assert d.day == min(dom, calendar.monthrange(d.year, d.month)[1])
    assert (b.year * 12 + b.month) - (a.year * 12 + a.month) == 1
    if exists(a, at, z):
        assert local(first, z).time() == at


def test_every_year_on_a_birthday_and_29_february_on_the_28th() -> None:
    z = ZoneInfo("Europe/London")
    ev = CampaignEvent("e", "f", "birthday", -86400, time(10), "year")
    now = ms(datetime(2026, 6, 1, tzinfo=UTC))
    got = next_fire(ev, "1990-05-17", z, now)  # this year's has passed: next year's, a day before
    assert got == ms(datetime(2027, 5, 16, 10, 0, tzinfo=z))
    leap = CampaignEvent("e", "f", "birthday", 0, time(9), "year")
    assert next_fire(leap, "2000-02-29", z, now) == ms(datetime(2027, 2, 28, 9, 0, tzinfo=z))
    assert next_fire(leap, "02-29", z, ms(datetime(2027, 6, 1, tzinfo=UTC))) == ms(
        datetime(2028, 2, 29, 9, 0, tzinfo=z)
    )


@pytest.mark.parametrize("value", [None, "", "next tuesday", "2026-13-01", 12, True, "31/12/2026"])
def test_an_empty_or_unreadable_date_schedules_nothing(value: Any) -> None:
    ev = CampaignEvent("e", "f", "due", 0, time(9))
    assert next_fire(ev, value, ZoneInfo("UTC"), 0) is None


BOOK = CampaignBook(
    {
        c.name: c
        for c in [
            parse(
                "appts",
                {"events": [{"id": "before", "flow": "remind", "field": "appointment_at", "offset": "-24h"}]},
                Problems(),
            ),
            parse(
                "renewals",
                {"events": [{"flow": "renew", "field": "renewal_day", "every": "month", "at": "09:00"}]},
                Problems(),
            ),
        ]
        if c is not None
    }
)


@settings(max_examples=200, deadline=None)
@given(
    old=st.one_of(st.none(), st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2030, 1, 1))),
    new=st.one_of(st.none(), st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2030, 1, 1))),
    now_day=st.dates(min_value=date(2025, 1, 1), max_value=date(2030, 1, 1)),
)
def test_a_changed_field_reschedules_never_in_the_past_and_a_cleared_one_leaves_nothing(
    old: datetime | None, new: datetime | None, now_day: date
) -> None:
    z = ZoneInfo("Europe/London")
    now = ms(datetime.combine(now_day, time(12), UTC))
    before = {"appointment_at": old.isoformat() if old else None}
    after = {"appointment_at": new.isoformat() if new else None}
    remove, add = BOOK.changed(NUMBER, before, after, z, now)
    member = keys.timer_member(NUMBER, "k", "appts:before")
    if before == after:
        assert (remove, add) == ([], [])
        return
    assert all(due > now for _, due in add)
    if new is None or ms(new.replace(tzinfo=z)) - 86_400_000 <= now:
        assert remove == [member] and add == []
    else:
        assert remove == [] and add == [(member, ms(new.replace(tzinfo=z)) - 86_400_000)]
    slots = {s.member: s for s in BOOK.slots(NUMBER, after, z, now)}
    assert slots[member].due == (add[0][1] if add else None)


def test_a_fired_timer_starts_the_occurrence_and_gives_the_next_or_is_late_or_stale() -> None:
    z = ZoneInfo("UTC")
    due = ms(datetime(2026, 5, 1, 9, 0, tzinfo=UTC))
    f = BOOK.fired(NUMBER, "renewals:renew", {"renewal_day": 1}, z, due + 50)
    assert f.verdict == "start" and f.campaign == "renewals"
    assert f.next == (
        keys.timer_member(NUMBER, "k", "renewals:renew"),
        ms(datetime(2026, 6, 1, 9, tzinfo=UTC)),
    )
    late = BOOK.fired(NUMBER, "renewals:renew", {"renewal_day": 1}, z, due + LATE_MS + 1)
    assert late.verdict == "late" and late.next is not None
    # The field moved to a later day before the timer was handled: nothing due yet, rescheduled.
    moved = BOOK.fired(NUMBER, "appts:before", {"appointment_at": "2026-05-20T10:00:00Z"}, z, due)
    assert moved.verdict == "stale" and moved.next is not None and moved.next[1] > due
    assert BOOK.fired(NUMBER, "gone:x", {}, z, due).verdict == "stale"
    assert BOOK.fired(NUMBER, "appts:before", {}, z, due) == BOOK.fired(NUMBER, "appts:before", {}, z, due)
    assert BOOK.fired(NUMBER, "appts:before", {}, z, due).next is None


# -- the language ------------------------------------------------------------------------------

GOOD = """\
campaign: appointments
description: Reminders around a booked appointment
events:
  - id: day_before
    flow: remind
    field: appointment_at
    offset: -24h
  - id: follow_up
    flow: remind
    field: appointment_at
    offset: 3d
    at: "10:00"
"""


def test_a_campaign_file_loads(tmp_path: Path) -> None:
    (tmp_path / "appointments.yaml").write_text(GOOD)
    (c,) = load_dir(tmp_path, {"remind"}).values()
    assert c.name == "appointments" and c.source == "file"
    assert [e.as_json() for e in c.events] == [
        {"id": "day_before", "flow": "remind", "field": "appointment_at", "offset": "-1d"},
        {"id": "follow_up", "flow": "remind", "field": "appointment_at", "offset": "3d", "at": "10:00"},
    ]


@pytest.mark.parametrize(
    ("label", "text", "line", "says"),
    [
        (
            "unknown flow",
            GOOD.replace(
                "flow: remind\n    field: appointment_at\n    offset: 3d",
                "flow: nope\n    field: appointment_at\n    offset: 3d",
            ),
            9,
            "events[1].flow: flow 'nope' is not loaded",
        ),
        ("bad offset", GOOD.replace("-24h", "yesterday"), 7, "events[0].offset: must be a signed amount"),
        ("hours with at", GOOD.replace("offset: 3d", "offset: 36h"), 11, "offset is in whole days"),
        ("bad time", GOOD.replace('"10:00"', '"25:00"'), 12, "events[1].at: must be a local time"),
        (
            "bad every",
            GOOD.replace("offset: 3d", "every: week"),
            11,
            "events[1].every: must be month or year",
        ),
        ("unknown key", GOOD.replace("offset: -24h", "ofset: -24h"), 7, "events[0].ofset: unknown key"),
        ("same id", GOOD.replace("follow_up", "day_before"), 8, "event id 'day_before' is used twice"),
        ("no events", "campaign: x\nevents: []\n", 2, "events: must be a list of 1 to 20 events"),
        (
            "bad name",
            GOOD.replace("campaign: appointments", "campaign: Big Name"),
            1,
            "campaign: must be a name",
        ),
        (
            "bad field",
            GOOD.replace("field: appointment_at\n    offset: -24h", "field: 9x\n    offset: -24h"),
            6,
            "events[0].field: must name a contact field",
        ),
        (
            "duplicate key",
            GOOD.replace("    offset: -24h\n", "    offset: -24h\n    offset: -2h\n"),
            8,
            "key 'offset' appears twice",
        ),
        ("yaml", GOOD.replace("events:", "events: [\n"), 5, "YAML"),
    ],
)
def test_a_bad_campaign_file_is_refused_with_its_line(
    tmp_path: Path, label: str, text: str, line: int, says: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(FlowErrors) as caught:
        load_file(path, {"remind"})
    shown = str(caught.value)
    assert f"{path}:{line}:" in shown and says in shown, (label, shown)


def test_two_files_with_one_campaign_name_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD)
    with pytest.raises(FlowErrors, match="also defined in"):
        load_dir(tmp_path, {"remind"})


# -- campaigns.lua, on a real Redis --------------------------------------------------------------


async def test_the_script_sets_moves_removes_and_leaves_a_due_fire_to_fire(redis_url: str) -> None:
    r = redis_client(redis_url)
    shard = 2
    tm = keys.timers(shard)
    a, b, c = (keys.timer_member(f"+44770090000{i}", "k", "x:y") for i in range(3))
    try:
        await r.delete(tm)
        await r.zadd(tm, {b: 500, c: 700})

        async def run(*slots: tuple[str, int | None, int | None]) -> CampaignTimersReply:
            call = CampaignTimersArgs(shard, tuple(slots))
            return CampaignTimersReply.parse(await r.eval(SCRIPT, 1, *call.to_keys(), *call.to_argv()))

        # a: new; b: due at 500, not yet fired, unchanged (keep 500): stays; c: cleared.
        assert await run((a, 2000, None), (b, 1500, 500), (c, None, None)) == CampaignTimersReply(1, 1)
        assert dict(await r.zrange(tm, 0, -1, withscores=True)) == {a.encode(): 2000, b.encode(): 500}
        # b's field changed: the due one is no longer its occurrence, so it moves.
        assert await run((b, 1800, 400)) == CampaignTimersReply(1, 0)
        assert await run((a, 2000, None)) == CampaignTimersReply(0, 0)  # unchanged: no write
        assert dict(await r.zrange(tm, 0, -1, withscores=True)) == {a.encode(): 2000, b.encode(): 1800}
    finally:
        await r.delete(tm)
        await r.aclose()


SCRIPT = (Path(__file__).parents[1] / "engine/core/scripts/campaigns.lua").read_text()


def test_flows_validate_checks_the_campaigns_beside_the_flows(tmp_path: Path) -> None:
    (tmp_path / "remind.yaml").write_text("name: remind\nstart: s\nnodes:\n  s: {say: hi, end: sent}\n")
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns" / "a.yaml").write_text(GOOD)
    ok = run_parley("flows", "validate", str(tmp_path))
    assert ok.returncode == 0 and ok.stdout.strip() == "1 flow(s) valid, 1 campaign(s) valid", ok.stderr
    (tmp_path / "campaigns" / "a.yaml").write_text(
        GOOD.replace(
            "flow: remind\n    field: appointment_at\n    offset: 3d",
            "flow: gone\n    field: appointment_at\n    offset: 3d",
        )
    )
    bad = run_parley("flows", "validate", str(tmp_path))
    assert bad.returncode == 2 and "a.yaml:9: campaign 'appointments': events[1].flow" in bad.stderr


@settings(max_examples=60, deadline=None)
@given(
    writes=st.lists(
        st.tuples(
            st.integers(0, 20 * 86400),  # seconds the clock moves before this write
            st.one_of(
                st.none(), st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2026, 4, 1))
            ),
        ),
        min_size=1,
        max_size=8,
    ),
    zone=zones,
)
def test_on_redis_each_write_leaves_the_next_fire_or_nothing(
    redis_server: str, writes: list[tuple[int, datetime | None]], zone: str
) -> None:
    """Writes of the field over time (due timers fired in between, as the workers would): after
    each, the timer holds the fire the field gives from now, never a past one; cleared, none."""
    client = sync_redis_client(redis_server)
    z = ZoneInfo(zone)
    shard = 1
    tm = keys.timers(shard)
    member = keys.timer_member(NUMBER, "k", "appts:before")
    (ev,) = BOOK.campaigns["appts"].events
    now = ms(datetime(2026, 1, 1, tzinfo=UTC))
    client.delete(tm)
    try:
        for step, value in writes:
            now += step * 1000
            client.zremrangebyscore(tm, "-inf", now)  # what was due has fired
            fields = {"appointment_at": value.isoformat() if value else None}
            slots = tuple((s.member, s.due, s.keep) for s in BOOK.slots(NUMBER, fields, z, now, only="appts"))
            call = CampaignTimersArgs(shard, slots)
            client.eval(SCRIPT, 1, *call.to_keys(), *call.to_argv())
            score = client.zscore(tm, member)
            expected = next_fire(ev, fields["appointment_at"], z, now)
            assert (None if score is None else int(score)) == expected
            assert expected is None or expected > now
    finally:
        client.delete(tm)
        client.close()


@settings(max_examples=200, deadline=None)
@given(
    offset=st.integers(-999, 999).flatmap(lambda n: st.sampled_from([f"{n}m", f"{n}h", f"{n}d", f"{n}w"])),
    at=st.one_of(st.none(), st.sampled_from(["00:00", "09:30", "23:59"])),
    every=st.sampled_from([None, "month", "year"]),
)
def test_a_definition_reads_back_as_itself(offset: str, at: str | None, every: str | None) -> None:
    """What the API stores (as_json) is read again by every process: it must parse to the same."""
    ev: dict[str, Any] = {"flow": "remind", "field": "d", "offset": offset}
    if at is not None:
        ev["at"] = at
    if every is not None:
        ev["every"] = every
    first = parse("c", {"events": [ev]}, Problems())
    if first is None:
        assert at is not None and offset[-1] in "mh"  # the one rule the pattern cannot say alone
        return
    again = parse("c", {"events": [e.as_json() for e in first.events]}, Problems())
    assert again is not None and again.events == first.events and again.digest == first.digest
