"""Normalising customer replies once per turn, so every reply test reads the same view."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import unicodedata
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_WORD_RE = re.compile(r"[\w']+|[\U0001F300-\U0001FAFF\u2600-\u27BF]", re.UNICODE)
#: A number in a reply: at most 15 digits either side of the point (beyond that it is an order
#: or card number, not an answer, and no longer exact as a float), not part of a longer run.
_NUMBER_RE = re.compile(r"(?<![\w.])[-+]?[0-9]{1,15}(?:[.,][0-9]{1,15})?(?![0-9])")
_OUT_OF_RE = re.compile(r"^\s*([-+]?[0-9]{1,15}(?:[.,][0-9]{1,15})?)\s*(?:/|out of|of)\s*[0-9]")
_WHOLE_RE = re.compile(r"[0-9]{1,15}")

NUMBER_WORDS = {
    "zero": 0, "nought": 0, "nil": 0, "none": 0, "one": 1, "two": 2, "three": 3, "four": 4,
    "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11,
    "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
}  # fmt: skip


class _Decimals(dict[int, int]):
    """``str.translate`` table: every Unicode decimal digit (Arabic-Indic ``٣``, Devanagari
    ``३``, ...) to its ASCII digit, worked out once per character seen. Only decimals (category
    Nd): ``᧚`` or ``²`` are digits to ``str.isdigit`` but not decimal, so ``int()`` refuses them;
    they stay as they are and are not read as numbers."""

    def __missing__(self, code: int) -> int:
        value = unicodedata.decimal(chr(code), None)
        self[code] = code if value is None else ord("0") + value
        return self[code]


_DECIMALS = _Decimals()


def ascii_digits(text: str) -> str:
    """``text`` with every Unicode decimal digit written as its ASCII digit."""
    return text if text.isascii() else text.translate(_DECIMALS)


def parse_whole(text: str) -> int | None:
    """A whole number that is all of ``text`` (any script's decimal digits, at most 15 of them:
    ``int()`` refuses over 4,300 and some digits it does not read at all), else None."""
    text = ascii_digits(text)
    return int(text) if _WHOLE_RE.fullmatch(text) else None


def fold(text: str) -> str:
    """Lower case, accents removed, whitespace collapsed: the form keywords are compared in."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.casefold().split())


class _lazy(Generic[T]):
    """Computed on first access, then stored on the instance (which shadows this descriptor).
    ``functools.cached_property`` does the same but takes a lock on every first access in
    Python 3.11, which showed up in the decision benchmark."""

    def __init__(self, fn: Callable[[Any], T]) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __get__(self, obj: Any, owner: type | None = None) -> T:
        value = self.fn(obj)
        obj.__dict__[self.name] = value
        return value


@dataclass
class Reply:
    """One inbound text, with the views reply tests need computed lazily and at most once.

    ``today`` (the recipient's local date) anchors relative dates ("tomorrow", "friday");
    ``region`` reads phone numbers written without a country code. Both are worked out only
    if a test asks (the region lookup alone costs more than the rest of a turn's decision).
    """

    raw: str
    now_ms: int = 1_767_225_600_000
    timezone: str | None = None
    contact_number: str | None = None

    @_lazy
    def today(self) -> dt.date:
        tz: dt.tzinfo = dt.UTC
        if self.timezone:
            with contextlib.suppress(zoneinfo.ZoneInfoNotFoundError, ValueError):
                tz = zoneinfo.ZoneInfo(self.timezone)
        return dt.datetime.fromtimestamp(self.now_ms / 1000, tz).date()

    @_lazy
    def region(self) -> str:
        return region_of(self.contact_number)

    @_lazy
    def folded(self) -> str:
        return fold(self.raw)

    @_lazy
    def plain(self) -> str:
        """Folded, with every script's decimal digits as ASCII: what numbers, dates and times
        are read from."""
        return ascii_digits(self.folded)

    @_lazy
    def words(self) -> list[str]:
        return _WORD_RE.findall(self.folded)

    @_lazy
    def number(self) -> float | None:
        """The number the customer gave: ``9``, `` 9! ``, ``9/10``, ``nine``, ``8.5``; else None."""
        text = self.plain
        m = _OUT_OF_RE.match(text)
        if m:
            return _to_number(m.group(1))
        m = _NUMBER_RE.search(text)
        if m:
            return _to_number(m.group(0))
        for w in self.words:
            if w in NUMBER_WORDS:
                return float(NUMBER_WORDS[w])
        return None


def region_of(number: str | None) -> str:
    """The region of an E.164 number (for reading local numbers in replies), GB if unknown."""
    if not number or not number.startswith("+"):
        return "GB"
    for digits in (4, 3, 2):  # country calling codes are 1 to 3 digits
        region = _region_for_code(number[1:digits])
        if region:
            return region
    return "GB"


@lru_cache(maxsize=512)
def _region_for_code(code: str) -> str | None:
    import phonenumbers

    if not code.isdigit():
        return None
    region: str = phonenumbers.region_code_for_country_code(int(code))
    return None if region == "ZZ" else region


def _to_number(s: str) -> float:
    return float(s.replace(",", "."))
