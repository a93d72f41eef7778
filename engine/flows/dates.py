"""Reading dates and times the way customers type them, relative to their local today."""

from __future__ import annotations

import datetime as dt
import re

MONTHS = {
    m: i + 1
    for i, names in enumerate(
        [("jan", "january"), ("feb", "february"), ("mar", "march"), ("apr", "april"), ("may",),
         ("jun", "june"), ("jul", "july"), ("aug", "august"), ("sep", "sept", "september"),
         ("oct", "october"), ("nov", "november"), ("dec", "december")]
    )
    for m in names
}  # fmt: skip
WEEKDAYS = {
    d: i
    for i, names in enumerate(
        [("mon", "monday"), ("tue", "tues", "tuesday"), ("wed", "wednesday"),
         ("thu", "thur", "thurs", "thursday"), ("fri", "friday"), ("sat", "saturday"),
         ("sun", "sunday")]
    )
    for d in names
}  # fmt: skip
_ISO = re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b")
_NUMERIC = re.compile(r"\b(\d{1,2})[/.-](\d{1,2})(?:[/.-](\d{2,4}))?\b")
_DAY_MONTH = re.compile(r"\b(\d{1,2})(?:st|nd|rd|th)?(?: of)? ([a-z]+)\b")
_MONTH_DAY = re.compile(r"\b([a-z]+) (\d{1,2})(?:st|nd|rd|th)?\b")
_TIME = re.compile(r"\b(\d{1,2})(?:[:.h](\d{2}))?\s*(am|pm|a\.m\.|p\.m\.)?(?![\d/])")


def _safe(y: int, m: int, d: int) -> dt.date | None:
    try:
        return dt.date(y, m, d)
    except ValueError:
        return None


def _future(today: dt.date, m: int, d: int) -> dt.date | None:
    """Day and month without a year: this year's, or next year's if that has passed."""
    got = _safe(today.year, m, d)
    if got is not None and got < today:
        got = _safe(today.year + 1, m, d)
    return got


def parse_date(folded: str, today: dt.date, day_first: bool = True) -> dt.date | None:
    """A date in ``folded`` text: ISO, 25/12(/2026), 25 dec, dec 25, today, tomorrow, friday."""
    words = folded.split()
    if "today" in words:
        return today
    if "tomorrow" in words:
        return today + dt.timedelta(days=1)
    if m := _ISO.search(folded):
        return _safe(int(m[1]), int(m[2]), int(m[3]))
    if m := _NUMERIC.search(folded):
        a, b = int(m[1]), int(m[2])
        d, mo = (a, b) if day_first else (b, a)
        if m[3]:
            y = int(m[3])
            return _safe(y + 2000 if y < 100 else y, mo, d)
        return _future(today, mo, d)
    if (m := _DAY_MONTH.search(folded)) and m[2] in MONTHS:
        return _future(today, MONTHS[m[2]], int(m[1]))
    if (m := _MONTH_DAY.search(folded)) and m[1] in MONTHS:
        return _future(today, MONTHS[m[1]], int(m[2]))
    for w in words:
        w = w.strip(".,!?")
        if w in WEEKDAYS:
            ahead = (WEEKDAYS[w] - today.weekday()) % 7 or 7
            return today + dt.timedelta(days=ahead)
    return None


def parse_time(folded: str) -> dt.time | None:
    """A time of day: 3pm, 3:30 pm, 15:30, 15h30, noon, midnight."""
    if "noon" in folded.split():
        return dt.time(12, 0)
    if "midnight" in folded.split():
        return dt.time(0, 0)
    for m in _TIME.finditer(folded):
        hour, minute, meridiem = int(m[1]), int(m[2] or 0), (m[3] or "").replace(".", "")
        if not meridiem and m[2] is None:
            continue  # a bare number is not a time
        if meridiem:
            if not 1 <= hour <= 12:
                continue
            hour = hour % 12 + (12 if meridiem == "pm" else 0)
        if hour < 24 and minute < 60:
            return dt.time(hour, minute)
    return None
