"""Quiet hours: when a business-started message may reach a recipient, in the recipient's time.

The recipient's time zone is the contact's ``timezone``, else the one zone phonenumbers knows for
the number (a country or area with several zones gives none), else ``governance.default_timezone``.
Sending windows are per weekday (``governance.send_window`` for every day, ``send_windows`` per
day, an empty window meaning no sending that day); a public holiday of ``governance.holidays``
(a country code, the ``holidays`` package) uses the ``holiday`` window, no sending by default.

:func:`next_allowed` is pure: it answers "now" (None) or the first allowed minute after now, so
a deferred send lands at the opening of the next window (plus a per-contact jitter, so a campaign
started at night does not all leave at 08:00:00).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as pn_timezone

from engine.core.config import Config
from engine.core.errors import ConfigError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: How far ahead to look for an open window before giving up (a config with no window at all).
HORIZON_DAYS = 15


def parse_window(text: str) -> tuple[time, time] | None:
    """``"08:00-21:00"`` -> (08:00, 21:00); ``""`` -> None (no sending that day)."""
    text = text.strip()
    if not text:
        return None
    try:
        a, b = (part.strip() for part in text.split("-"))
        start, end = time.fromisoformat(a), time.fromisoformat(b)
    except ValueError:
        raise ValueError(f"expected a window like 08:00-21:00, got {text!r}") from None
    if end <= start:
        raise ValueError(f"a window must end after it starts (same day), got {text!r}")
    return start, end


@dataclass(frozen=True)
class QuietHours:
    """The sending windows; ``enabled`` is False when nothing is configured (always allowed)."""

    windows: Mapping[str, tuple[time, time] | None]  # weekday or "holiday" -> window
    default_tz: str = "UTC"
    holidays_country: str = ""
    jitter_s: int = 900

    @property
    def enabled(self) -> bool:
        return bool(self.windows)

    @classmethod
    def from_config(
        cls, every_day: str, per_day: Mapping[str, str], holidays: str, default_tz: str, jitter_s: float
    ) -> QuietHours:
        windows: dict[str, tuple[time, time] | None] = {}
        if every_day.strip() or per_day:
            base = parse_window(every_day) if every_day.strip() else (time(0), time(23, 59))
            windows = dict.fromkeys(DAYS, base)
            windows["holiday"] = None
            for day, text in per_day.items():
                if day not in (*DAYS, "holiday"):
                    raise ValueError(f"unknown day {day!r} (mon..sun or holiday)")
                windows[day] = parse_window(text)
        return cls(windows, default_tz, holidays.upper(), int(jitter_s))

    def zone_of(self, number: str, contact_tz: str | None) -> ZoneInfo:
        for name in (contact_tz, _zone_of_number(number), self.default_tz):
            if name:
                try:
                    return ZoneInfo(name)
                except (ZoneInfoNotFoundError, ValueError):
                    continue
        return ZoneInfo("UTC")

    def next_allowed(self, now_ms: int, number: str, contact_tz: str | None) -> int | None:
        """None when a business-started message may go now; else when it may (ms, jitter added)."""
        if not self.enabled:
            return None
        zone = self.zone_of(number, contact_tz)
        local = datetime.fromtimestamp(now_ms / 1000, UTC).astimezone(zone)
        for offset in range(HORIZON_DAYS):
            day = local.date() + timedelta(days=offset)
            window = self._window(day)
            if window is None:
                continue
            opens = datetime.combine(day, window[0], zone)
            closes = datetime.combine(day, window[1], zone)
            if offset == 0 and opens <= local < closes:
                return None
            if local < opens:
                jitter = zlib.crc32(number.encode()) % max(1, self.jitter_s) if self.jitter_s else 0
                # The jitter never pushes a send past the window's close.
                span = int((closes - opens).total_seconds())
                return int(opens.timestamp() * 1000) + min(jitter, max(0, span - 60)) * 1000
        return None  # no window in the next two weeks: a configuration error caught at start-up

    def _window(self, day: date) -> tuple[time, time] | None:
        if self.holidays_country and _is_holiday(self.holidays_country, day):
            return self.windows.get("holiday")
        return self.windows.get(DAYS[day.weekday()])


@functools.lru_cache(maxsize=65536)
def _zone_of_number(number: str) -> str:
    """The number's zone when it tells one: its own zones, else (a range the data does not place,
    like the UK's +44 7700 900xxx drama numbers) those of its country's example number; several
    zones count when they keep one clock (a UK mobile: London, Guernsey, Jersey, Isle of Man)."""
    try:
        parsed = phonenumbers.parse(number)
    except phonenumbers.NumberParseException:
        return ""
    zones = [z for z in pn_timezone.time_zones_for_number(parsed) if z != "Etc/Unknown"]
    if not zones:
        region = phonenumbers.region_code_for_number(parsed) or phonenumbers.region_code_for_country_code(
            parsed.country_code or 0
        )
        example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
        if example is not None:
            zones = [z for z in pn_timezone.time_zones_for_number(example) if z != "Etc/Unknown"]
    if len(zones) == 1 or (zones and _same_clock(zones)):
        return str(zones[0])
    return ""


def _same_clock(zones: list[str]) -> bool:
    """Whether the zones show the same time in winter and summer (so any of them will do)."""
    probes = (datetime(2026, 1, 15, 12, tzinfo=UTC), datetime(2026, 7, 15, 12, tzinfo=UTC))
    try:
        offsets = {tuple(p.astimezone(ZoneInfo(z)).utcoffset() for p in probes) for z in zones}
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return len(offsets) == 1


@functools.lru_cache(maxsize=4096)
def _is_holiday(country: str, day: date) -> bool:
    import holidays

    return day in holidays.country_holidays(country, years=day.year)


def check_config(cfg: Config) -> None:
    """The send windows' cross-field rule, run by :func:`engine.app.settings.load_config`: the
    windows parse, and when quiet hours are on some day has a window."""
    gov = cfg.governance
    try:
        quiet = QuietHours.from_config(
            gov.send_window, gov.send_windows, gov.holidays, gov.default_timezone, gov.quiet_jitter
        )
        if quiet.enabled and not any(quiet.windows.get(d) for d in DAYS):
            raise ValueError("no day has a sending window")
    except ValueError as exc:
        raise ConfigError("governance.send_window", str(exc)) from None
