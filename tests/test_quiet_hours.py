"""Quiet hours: business-started messages wait for the recipient's sending window."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.app.runtime import Runtime
from engine.conversation.worker import fire_timers
from engine.core import contacts, keys
from engine.core.clock import FakeClock
from engine.governance.quiet import QuietHours
from tests.conftest import ANN, make_config
from tests.test_governance import Phone


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def local(ms_value: int, zone: str) -> datetime:
    return datetime.fromtimestamp(ms_value / 1000, UTC).astimezone(ZoneInfo(zone))


UK = QuietHours.from_config("08:00-21:00", {"sun": ""}, "GB", "UTC", 0)


def test_a_send_at_night_waits_for_the_morning_in_the_recipients_zone() -> None:
    assert UK.next_allowed(ms("2026-03-03T12:00:00+00:00"), ANN, "Europe/London") is None
    nxt = UK.next_allowed(ms("2026-03-03T22:30:00+00:00"), ANN, "Europe/London")
    assert nxt is not None and local(nxt, "Europe/London") == datetime(
        2026, 3, 4, 8, 0, tzinfo=ZoneInfo("Europe/London")
    )
    # 22:30 in London is 17:30 in New York: inside the window there.
    assert UK.next_allowed(ms("2026-03-03T22:30:00+00:00"), ANN, "America/New_York") is None


def test_sundays_and_public_holidays_have_no_window() -> None:
    saturday_night = ms("2026-03-07T22:00:00+00:00")
    nxt = UK.next_allowed(saturday_night, ANN, "Europe/London")
    assert nxt is not None and local(nxt, "Europe/London").strftime("%a %H:%M") == "Mon 08:00"
    christmas_eve_night = ms("2026-12-24T22:00:00+00:00")  # 25th (Fri) and 26th... 28th are holidays
    nxt = UK.next_allowed(christmas_eve_night, ANN, "Europe/London")
    assert nxt is not None and local(nxt, "Europe/London").date().isoformat() == "2026-12-29"


def test_the_zone_comes_from_the_contact_then_the_number_then_the_default() -> None:
    assert UK.zone_of("+12125551234", None).key == "America/New_York"  # one zone for the number
    assert UK.zone_of("+12125551234", "Europe/Paris").key == "Europe/Paris"  # the contact's wins
    assert UK.zone_of("+34600123456", None).key == "UTC"  # Spain: two zones, so the default


def test_the_jitter_spreads_contacts_inside_the_window() -> None:
    q = QuietHours.from_config("08:00-21:00", {}, "", "UTC", 900)
    night = ms("2026-03-03T23:00:00+00:00")
    opens = ms("2026-03-04T08:00:00+00:00")
    times = {q.next_allowed(night, f"+4477009{i:05d}", None) for i in range(200)}
    assert all(t is not None and opens <= t < opens + 900_000 for t in times)
    assert len(times) > 100


@pytest.mark.parametrize("bad", ["21:00-08:00", "8am-9pm", "08:00"])
def test_bad_windows_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        QuietHours.from_config(bad, {}, "", "UTC", 0)


ZONES = ["Europe/London", "America/New_York", "Asia/Kolkata", "Australia/Sydney", "Pacific/Chatham"]


@settings(max_examples=200, deadline=None)
@given(
    at=st.integers(ms("2026-01-01T00:00:00+00:00"), ms("2027-12-31T00:00:00+00:00")),
    zone=st.sampled_from(ZONES),
    start=st.integers(0, 12),
    length=st.integers(1, 11),
)
def test_the_next_allowed_minute_is_the_first_one(at: int, zone: str, start: int, length: int) -> None:
    q = QuietHours.from_config(f"{start:02d}:00-{start + length:02d}:00", {"sun": ""}, "GB", "UTC", 0)
    nxt = q.next_allowed(at, ANN, zone)

    def allowed(t: int) -> bool:
        return q.next_allowed(t, ANN, zone) is None

    if nxt is None:
        when = local(at, zone)
        assert when.weekday() != 6 and time(start) <= when.time() < time(start + length)
        return
    assert nxt > at and allowed(nxt)
    assert local(nxt, zone).time() == time(start)  # the opening of a window
    # Nothing in between was allowed (checked every 30 minutes and just before the opening).
    step = 30 * 60 * 1000
    assert not any(allowed(t) for t in range(at, nxt, step))
    assert not allowed(nxt - 60_000)


async def test_a_journey_started_at_night_is_sent_when_the_window_opens(redis_url: str) -> None:
    cfg = make_config(
        redis_url,
        gateways={"carrier": {"type": "http", "url": "http://127.0.0.1:9/"}},
        governance={"send_window": "08:00-21:00", "quiet_jitter": "0s"},
    )
    clock = FakeClock()  # 2026-01-01T00:00Z, in the default zone (UTC): quiet
    async with Runtime(cfg, clock=clock, worker=False, senders=False, http=False) as rt:
        await contacts.upsert(
            rt.store, rt.config.engine.shards, contacts.Contact(ANN, {"first_name": "Ann"}), clock.now_ms()
        )
        phone = Phone(rt)
        assert await phone.start("thank_you") == []  # deferred, not dropped
        ((member, due),) = await rt.store.redis.zrange(
            keys.timers(keys.shard_of(ANN, 4)), 0, -1, withscores=True
        )
        assert b"|d|" in member and int(due) == clock.now_ms() + 8 * 3600 * 1000
        clock.advance(8 * 3600 - 60)
        assert await fire_timers(rt) == 0
        clock.advance(60)
        assert await fire_timers(rt) == 1
        (sent,) = await phone.replies()
        assert sent.startswith("Thanks for your order, Ann!")
        # A customer who texts at night gets an answer at night: replies are not held.
        clock.advance(15 * 3600)  # 23:00
        assert (await phone.text("nps"))[0].startswith("Hi Ann")


@pytest.mark.parametrize(
    ("label", "number", "utc_offset_in_july"),
    [
        ("UK mobile: four zones, one clock", "+447911123456", 1),
        ("UK drama range the data does not place: the country's", "+447700900123", 1),
        ("New York", "+12125550100", -4),
        ("Australian mobile: zones of different clocks, none", "+61412345678", None),
    ],
)
def test_the_number_tells_the_zone_when_it_can(
    label: str, number: str, utc_offset_in_july: int | None
) -> None:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from engine.governance.quiet import _zone_of_number

    zone = _zone_of_number(number)
    if utc_offset_in_july is None:
        assert zone == "", label
    else:
        offset = datetime(2026, 7, 1, tzinfo=UTC).astimezone(ZoneInfo(zone)).utcoffset()
        assert offset is not None and offset.total_seconds() == utc_offset_in_july * 3600, label
