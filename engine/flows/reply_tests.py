"""Reply tests: each turns a customer's reply into a match (with a value) or no match.

A test is written in a case as ``when: NAME`` (no argument) or ``when: {NAME: ARG}``. Each is
registered here in one line; :func:`compile_test` checks the argument at load time so that a
turn never meets a malformed test.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import phonenumbers

from engine.flows.dates import parse_date, parse_time
from engine.flows.text import Reply, fold, parse_whole


@dataclass(frozen=True)
class Match:
    """A test matched; ``value`` is what is saved as the result (a number, the text, ...)."""

    value: object


ReplyTest = Callable[[Reply], Match | None]


class TestArgError(ValueError):
    """The argument of a test is wrong; the message says what is expected."""


def _number_value(n: float) -> int | float:
    return int(n) if n.is_integer() else n


def _num_arg(arg: Any, name: str) -> float:
    if isinstance(arg, bool) or not isinstance(arg, int | float):
        raise TestArgError(f"{name} needs a number, got {arg!r}")
    return float(arg)


def _number_between(arg: Any) -> ReplyTest:
    if not (isinstance(arg, list) and len(arg) == 2):
        raise TestArgError(f"number_between needs [low, high], got {arg!r}")
    lo, hi = (_num_arg(a, "number_between") for a in arg)
    if lo > hi:
        raise TestArgError(f"number_between: low {lo:g} is above high {hi:g}")

    def test(r: Reply) -> Match | None:
        n = r.number
        return Match(_number_value(n)) if n is not None and lo <= n <= hi else None

    return test


def _number_cmp(name: str, op: Callable[[float, float], bool]) -> Callable[[Any], ReplyTest]:
    def factory(arg: Any) -> ReplyTest:
        ref = _num_arg(arg, name)

        def test(r: Reply) -> Match | None:
            n = r.number
            return Match(_number_value(n)) if n is not None and op(n, ref) else None

        return test

    return factory


def _word_list(arg: Any, name: str) -> list[str]:
    if isinstance(arg, str):
        arg = arg.split()
    if not (isinstance(arg, list) and arg and all(isinstance(a, str) for a in arg)):
        raise TestArgError(f"{name} needs a list of words, got {arg!r}")
    return [fold(a) for a in arg]


def _any_word(arg: Any) -> ReplyTest:
    wanted = set(_word_list(arg, "any_word"))

    def test(r: Reply) -> Match | None:
        hit = next((w for w in r.words if w in wanted), None)
        return Match(r.raw.strip()) if hit is not None else None

    return test


def _all_words(arg: Any) -> ReplyTest:
    wanted = set(_word_list(arg, "all_words"))

    def test(r: Reply) -> Match | None:
        return Match(r.raw.strip()) if wanted <= set(r.words) else None

    return test


def _phrase(arg: Any) -> ReplyTest:
    if not isinstance(arg, str) or not arg.strip():
        raise TestArgError(f"phrase needs some text, got {arg!r}")
    pattern = re.compile(r"(?<!\w)" + re.escape(fold(arg)) + r"(?!\w)")

    def test(r: Reply) -> Match | None:
        return Match(r.raw.strip()) if pattern.search(r.folded) else None

    return test


def _regex(arg: Any) -> ReplyTest:
    if not isinstance(arg, str):
        raise TestArgError(f"regex needs a pattern string, got {arg!r}")
    try:
        pattern = re.compile(arg, re.IGNORECASE)
    except re.error as exc:
        raise TestArgError(f"regex {arg!r} does not compile: {exc}") from None

    def test(r: Reply) -> Match | None:
        m = pattern.search(r.raw)
        return Match(m.group(1) if m and m.groups() else r.raw.strip()) if m else None

    return test


YES_WORDS = frozenset(
    [
        "yes",
        "y",
        "yeah",
        "yep",
        "yup",
        "ok",
        "okay",
        "sure",
        "correct",
        "confirm",
        "confirmed",
        "👍",
        "si",
        "oui",
        "ja",
        "sim",
    ]
)
NO_WORDS = frozenset(["no", "n", "nope", "nah", "not", "never", "cancel", "👎", "non", "nein", "nao"])


def _yes(arg: Any) -> ReplyTest:
    def test(r: Reply) -> Match | None:
        ws = set(r.words)
        return Match(True) if ws & YES_WORDS and not ws & NO_WORDS else None

    return test


def _no(arg: Any) -> ReplyTest:
    def test(r: Reply) -> Match | None:
        ws = set(r.words)
        return Match(False) if ws & NO_WORDS and not ws & YES_WORDS else None

    return test


def _choice(arg: Any) -> ReplyTest:
    """``{choice: [Confirm, Rebook, Cancel]}``: "1"/"2"/"3", or the word (or its first letters)."""
    if not (isinstance(arg, list) and arg and all(isinstance(a, str) and a.strip() for a in arg)):
        raise TestArgError(f"choice needs a list of options, got {arg!r}")
    options = [(fold(a), a) for a in arg]

    def test(r: Reply) -> Match | None:
        text = r.folded.strip(" .!?")
        n = parse_whole(text)
        if n is not None and 1 <= n <= len(options):
            return Match(options[n - 1][1])
        hits = {orig for key, orig in options if key in r.words or key == text}
        if len(hits) == 1:
            return Match(hits.pop())
        if len(text) >= 3:
            prefix = {orig for key, orig in options if key.startswith(text)}
            if len(prefix) == 1:
                return Match(prefix.pop())
        return None

    return test


def _date(arg: Any) -> ReplyTest:
    """``date`` or ``{date: {order: mdy}}``: a date, as ISO text (``2026-12-25``)."""
    day_first = True
    if isinstance(arg, dict):
        order = arg.get("order", "dmy")
        if order not in ("dmy", "mdy") or set(arg) - {"order"}:
            raise TestArgError(f"date takes {{order: dmy | mdy}}, got {arg!r}")
        day_first = order == "dmy"
    elif arg is not None:
        raise TestArgError(f"date takes no argument or {{order: dmy | mdy}}, got {arg!r}")

    def test(r: Reply) -> Match | None:
        d = parse_date(r.plain, r.today, day_first)
        return Match(d.isoformat()) if d else None

    return test


def _time(arg: Any) -> ReplyTest:
    def test(r: Reply) -> Match | None:
        t = parse_time(r.plain)
        return Match(t.strftime("%H:%M")) if t else None

    return test


_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def _has_email(arg: Any) -> ReplyTest:
    def test(r: Reply) -> Match | None:
        m = _EMAIL.search(r.raw)
        return Match(m.group(0).lower()) if m else None

    return test


def _has_phone(arg: Any) -> ReplyTest:
    def test(r: Reply) -> Match | None:
        for m in phonenumbers.PhoneNumberMatcher(r.raw, r.region, leniency=phonenumbers.Leniency.POSSIBLE):
            return Match(phonenumbers.format_number(m.number, phonenumbers.PhoneNumberFormat.E164))
        return None

    return test


def _has_number(arg: Any) -> ReplyTest:
    def test(r: Reply) -> Match | None:
        n = r.number
        return Match(_number_value(n)) if n is not None else None

    return test


def _anything(arg: Any) -> ReplyTest:
    def test(r: Reply) -> Match | None:
        return Match(r.raw.strip()) if r.raw.strip() else None

    return test


#: name -> factory(argument) -> test. Tests that take no argument are written ``when: NAME``.
TESTS: dict[str, Callable[[Any], ReplyTest]] = {
    "number_between": _number_between,
    "number_equal": _number_cmp("number_equal", lambda n, ref: n == ref),
    "number_less": _number_cmp("number_less", lambda n, ref: n < ref),
    "number_greater": _number_cmp("number_greater", lambda n, ref: n > ref),
    "any_word": _any_word,
    "all_words": _all_words,
    "phrase": _phrase,
    "regex": _regex,
    "has_number": _has_number,
    "choice": _choice,
    "date": _date,
    "time": _time,
    "has_email": _has_email,
    "has_phone": _has_phone,
    "yes": _yes,
    "no": _no,
    "anything": _anything,
}
NO_ARGUMENT = frozenset({"yes", "no", "anything", "date", "time", "has_email", "has_phone", "has_number"})


def compile_test(spec: Any) -> ReplyTest:
    """Turn a ``when:`` value into a test, or raise :class:`TestArgError` saying why not."""
    if isinstance(spec, str):
        name, arg = spec, None
        if name in TESTS and name not in NO_ARGUMENT | {"date"}:
            raise TestArgError(f"{name} needs an argument: write {{{name}: ...}}")
    elif isinstance(spec, dict) and len(spec) == 1:
        ((name, arg),) = spec.items()
    else:
        raise TestArgError(f"expected a test name or {{test: argument}}, got {spec!r}")
    if name not in TESTS:
        raise TestArgError(f"unknown test {name!r} (known: {', '.join(sorted(TESTS))})")
    return TESTS[name](arg)
