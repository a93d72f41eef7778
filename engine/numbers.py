"""Phone numbers: everything that stores or looks up a contact goes through :func:`to_e164`."""

from __future__ import annotations

import functools

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


def to_e164(text: str, default_region: str) -> str:
    """Normalise ``text`` (``+44 7700 900123``, ``07700900123``, ``0044…``) to E.164.

    Local formats are read in ``default_region``. Raises :class:`InvalidNumber` with a reason a
    user can act on. The check is "possible" (right length for its country), not "valid" (in an
    allocated range): range data goes stale, and a new range must not lock customers out.
    """
    if not text or not text.strip():
        raise InvalidNumber("empty")
    return _to_e164(text, default_region)


@functools.lru_cache(maxsize=65536)
def _to_e164(text: str, default_region: str) -> str:
    """Parsing costs ~30 µs; the same numbers come back all day (only successes are cached)."""
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
