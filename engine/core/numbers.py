"""Phone numbers: everything that stores or looks up a contact goes through :func:`to_e164`."""

from __future__ import annotations

import functools
import re

import phonenumbers


class InvalidNumber(ValueError):
    """The text is not a valid phone number; the message says why."""


_REASONS = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
    phonenumbers.NumberParseException.NOT_A_NUMBER: "not a phone number",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
    phonenumbers.NumberParseException.TOO_LONG: "too long",
}


_POSSIBLE_REASONS = {
    phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
    phonenumbers.ValidationResult.TOO_SHORT: "too short for its country",
    phonenumbers.ValidationResult.TOO_LONG: "too long for its country",
    phonenumbers.ValidationResult.INVALID_LENGTH: "wrong length for its country",
    phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "a local number: add the area code",
}


#: What a written number may hold: digits, spaces and the usual separators (the Unicode dashes
#: and full-width forms spreadsheets produce included). Anything else (``ext. 5``, ``x``, ``#5``,
#: ``;ext=5``, letters) is refused rather than dropped: phonenumbers would quietly cut an
#: extension off or read letters as keypad digits, and a text cannot reach an extension, so
#: whoever sent the number would never learn that it is not the one stored.
_SEPARATORS = "\\s+\uff0b\\-\u2010-\u2015\u2212\uff0d.()\uff08\uff09/\u00ad\u200b\u2060"
NUMBER_CHARS = re.compile(f"[\\d{_SEPARATORS}]*")
NOT_NUMBER = re.compile(f"[^\\d{_SEPARATORS}]")
#: How an extension is written after a number: ext, ext., extension, x, #, ;ext=, a comma pause.
EXTENSION = re.compile(r"(?i)(?:e?xt|x\b|x\d|x$|#|;|,)")


def to_e164(text: str, default_region: str) -> str:
    """Normalise ``text`` (``+44 7700 900123``, ``07700900123``, ``0044…``) to E.164.

    Local formats are read in ``default_region``. Raises :class:`InvalidNumber` with a reason a
    user can act on. The check is "possible" (right length for its country), not "valid" (in an
    allocated range): range data goes stale, and a new range must not lock customers out. A
    number with an extension or any character that is not part of a phone number is refused.
    """
    if not text or not text.strip():
        raise InvalidNumber("empty")
    return _to_e164(text, default_region)


@functools.lru_cache(maxsize=65536)
def _to_e164(text: str, default_region: str) -> str:
    """Parsing costs ~30 µs; the same numbers come back all day (only successes are cached)."""
    if not NUMBER_CHARS.fullmatch(text):
        first = NOT_NUMBER.search(text)
        assert first is not None
        tail = text[first.start() :].strip()
        if EXTENSION.match(tail):
            raise InvalidNumber(f"has an extension ({tail[:20]!r}); a text message cannot reach an extension")
        raise InvalidNumber(f"{tail[:20]!r} is not part of a phone number (digits, spaces, + - . ( ) / only)")
    try:
        parsed = phonenumbers.parse(text, default_region.upper())
    except phonenumbers.NumberParseException as exc:
        raise InvalidNumber(_REASONS.get(exc.error_type, "not a phone number")) from None
    reason = phonenumbers.is_possible_number_with_reason(parsed)
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:
        raise InvalidNumber(_POSSIBLE_REASONS.get(reason, "not a possible number for its country"))
    e164: str = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return e164


def mask(number: str) -> str:
    """A number as logs show it: country prefix and last three digits (``+4477*****123``)."""
    if len(number) <= 7:
        return "*" * len(number)
    return number[:5] + "*" * (len(number) - 8) + number[-3:]


@functools.cache
def e164_pattern() -> str:
    """A regular expression (ECMA-262 and Python alike) matching exactly the E.164 numbers
    :func:`to_e164` accepts: ``+``, a country code, then a national number of one of that
    country's possible lengths (local-only lengths excluded), from the same phonenumbers metadata
    the check uses. The OpenAPI description uses it, so a client's validator agrees with ours."""
    from phonenumbers import PhoneMetadata
    from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE

    by_lengths: dict[tuple[int, ...], list[str]] = {}
    for code in sorted(COUNTRY_CODE_TO_REGION_CODE):
        region = phonenumbers.region_code_for_country_code(code)
        meta = PhoneMetadata.metadata_for_region_or_calling_code(code, region)
        if meta is None or meta.general_desc is None:
            continue
        desc = meta.general_desc
        lengths = sorted(set(desc.possible_length) - set(desc.possible_length_local_only or ()))
        lengths = [n for n in lengths if n > 0]
        if lengths:
            by_lengths.setdefault(tuple(lengths), []).append(str(code))
    alternatives = [f"(?:{'|'.join(codes)}){_digits(list(lengths))}" for lengths, codes in by_lengths.items()]
    return r"^\+(?:" + "|".join(alternatives) + ")$"


def _digits(lengths: list[int]) -> str:
    """``[0-9]{a,b}`` for each run of consecutive lengths, joined as alternatives."""
    runs: list[str] = []
    start = 0
    while start < len(lengths):
        end = start
        while end + 1 < len(lengths) and lengths[end + 1] == lengths[end] + 1:
            end += 1
        lo, hi = lengths[start], lengths[end]
        runs.append(f"[0-9]{{{lo}}}" if lo == hi else f"[0-9]{{{lo},{hi}}}")
        start = end + 1
    return runs[0] if len(runs) == 1 else "(?:" + "|".join(runs) + ")"
