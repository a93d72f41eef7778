"""SMPP 3.4 time fields (section 7.1.1): ``schedule_delivery_time`` and ``validity_period``.

Sixteen characters ``YYMMDDhhmmsstnnp`` (then the NUL), or empty for "immediately" / "the
SMSC's default validity":

- absolute: a local date and time to the tenth of a second (``t``), ``nn`` its difference from
  UTC in quarter hours (00-48) and ``p`` ``+`` (local time is ahead of UTC) or ``-`` (behind).
  Parley writes UTC (``000+``), so neither side's time zone matters.
- relative (``p`` ``R``): an interval, ``YY`` years ``MM`` months ``DD`` days ``hh:mm:ss`` from
  now (``t`` and ``nn`` are 0). Parley writes days, hours, minutes and seconds only (no months:
  their length is not defined) and reads a year as 365 days and a month as 30, as SMSCs commonly do.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_ABSOLUTE = re.compile(r"^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d)(\d{2})([+-])$")
_RELATIVE = re.compile(r"^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})000R$")
#: The longest interval the relative form carries with days alone (99 days 23:59:59).
MAX_RELATIVE_S = 99 * 86400 + 86399


class BadTime(ValueError):
    """Not an SMPP time (the field is named by the caller)."""


def encode_relative(seconds: int) -> str:
    """``seconds`` from now as a relative time (at least 1 s; at most MAX_RELATIVE_S)."""
    s = min(max(1, int(seconds)), MAX_RELATIVE_S)
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"0000{days:02d}{hours:02d}{minutes:02d}{secs:02d}000R"


def encode_absolute(at: datetime) -> str:
    """An instant (timezone-aware) as UTC, to the tenth of a second (rounded down)."""
    if at.tzinfo is None:
        raise ValueError("an absolute SMPP time needs a timezone-aware datetime")
    u = at.astimezone(UTC)
    if not 2000 <= u.year <= 2099:
        raise ValueError(f"SMPP times are 2000-2099, got {u.year}")
    return u.strftime("%y%m%d%H%M%S") + f"{u.microsecond // 100_000}00+"


def encode_ms(at_ms: int, now_ms: int, fmt: str) -> str:
    """The instant ``at_ms`` (epoch ms) as ``fmt`` says: ``relative`` (from ``now_ms``, whole
    seconds rounded down, so never later than ``at_ms``) or ``absolute``."""
    if fmt == "relative":
        return encode_relative((at_ms - now_ms) // 1000)
    return encode_absolute(datetime.fromtimestamp(at_ms / 1000, UTC))


def decode(value: str, now: datetime | None = None) -> datetime | None:
    """The instant an SMPP time names (relative ones from ``now``, default: the current time);
    None for an empty field. Raises BadTime for anything else."""
    if value == "":
        return None
    if m := _RELATIVE.match(value):
        return (now or datetime.now(UTC)) + timedelta(seconds=relative_seconds(value))
    m = _ABSOLUTE.match(value)
    if m is None:
        raise BadTime(f"{value!r} is not YYMMDDhhmmsstnnp (SMPP 3.4 section 7.1.1)")
    yy, mo, dd, hh, mi, ss, t, nn, p = m.groups()
    if int(nn) > 48:
        raise BadTime(f"{value!r}: UTC offset {nn} quarter hours is over 48")
    try:
        local = datetime(2000 + int(yy), int(mo), int(dd), int(hh), int(mi), int(ss), int(t) * 100_000, UTC)
    except ValueError as exc:
        raise BadTime(f"{value!r}: {exc}") from None
    offset = timedelta(minutes=15 * int(nn)) * (1 if p == "+" else -1)
    return local - offset


def relative_seconds(value: str) -> int:
    """The interval of a relative time, in seconds (a year 365 days, a month 30)."""
    m = _RELATIVE.match(value)
    if m is None:
        raise BadTime(f"{value!r} is not a relative time (YYMMDDhhmmss000R)")
    yy, mo, dd, hh, mi, ss = (int(x) for x in m.groups())
    return ((yy * 365 + mo * 30 + dd) * 24 + hh) * 3600 + mi * 60 + ss
