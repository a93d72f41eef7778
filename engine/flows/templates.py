"""Message templates: Jinja2 in an immutable sandbox, compiled once when a flow loads.

Missing data is an error unless the template gives a default (``{{ contact.first_name |
default("there") }}``): a message that says "Hi ," is worse than no message.
"""

from __future__ import annotations

import datetime as dt
import string
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import RenderError


@jinja2.pass_environment
def first_name(env: jinja2.Environment, value: object) -> object:
    """``"ann MARIE smith"`` -> ``"Ann"``: the first word, capitalised (``"jean-luc"`` ->
    ``"Jean-Luc"``; a mixed-case name such as ``"McDonald"`` is kept as written).

    Missing or blank data, or a "name" without a letter in it (``"."``, ``"123"``), comes out
    undefined, so ``| first_name | default("there")`` works.
    """
    if isinstance(value, jinja2.Undefined):
        return value
    words = str(value or "").split()
    word = words[0].strip(string.punctuation) if words else ""
    if not any(c.isalpha() for c in word):
        return env.undefined(name="first_name", hint="no usable name")
    if word.islower() or word.isupper():  # "ANN", "jean-luc": re-case; "McDonald": keep
        word = "-".join(part[:1].upper() + part[1:].lower() for part in word.split("-"))
    return word


CURRENCY_SYMBOLS = {"GBP": "£", "EUR": "€", "USD": "$", "AUD": "A$", "CAD": "C$", "JPY": "¥", "INR": "₹"}


def _to_datetime(value: object) -> dt.datetime | dt.date | None:
    if isinstance(value, dt.datetime | dt.date):
        return value
    if isinstance(value, str):
        text = value.strip().replace("Z", "+00:00")
        for parse in (dt.datetime.fromisoformat, dt.date.fromisoformat):
            try:
                return parse(text)
            except ValueError:
                continue
    return None


@jinja2.pass_environment
def datetime_filter(env: jinja2.Environment, value: object, fmt: str = "%a %d %b at %H:%M") -> object:
    """``"2026-11-25T10:30"`` -> ``"Wed 25 Nov at 10:30"`` (strftime format; CRM data is ISO 8601).

    Data that is missing or not a date comes out undefined, so ``| default(...)`` applies."""
    if isinstance(value, jinja2.Undefined):
        return value
    when = _to_datetime(value)
    if when is None:
        return env.undefined(name="datetime", hint=f"{value!r} is not an ISO date")
    return when.strftime(fmt.replace("%d", str(when.day)))  # "Wed 5 Nov", not "Wed 05 Nov"


@jinja2.pass_environment
def currency(env: jinja2.Environment, value: object, code: str = "GBP") -> object:
    """``12.5 | currency("GBP")`` -> ``"£12.50"``; ``-3`` -> ``"-£3.00"``; unknown codes as ``12.50 CHF``."""
    if isinstance(value, jinja2.Undefined):
        return value
    try:
        amount = float(str(value).replace(",", ""))
    except ValueError:
        return env.undefined(name="currency", hint=f"{value!r} is not an amount")
    sign = "-" if amount < 0 else ""
    digits = f"{abs(amount):,.0f}" if code == "JPY" else f"{abs(amount):,.2f}"
    symbol = CURRENCY_SYMBOLS.get(code.upper())
    return f"{sign}{symbol}{digits}" if symbol else f"{sign}{digits} {code.upper()}"


def make_environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True)
    env.filters["first_name"] = first_name
    env.filters["datetime"] = datetime_filter
    env.filters["currency"] = currency
    return env


class Template:
    """A compiled template and the source it came from."""

    __slots__ = ("_constant", "_globals", "_tpl", "source")

    def __init__(self, env: jinja2.Environment, source: str) -> None:
        self.source = source
        self._tpl = env.from_string(source)  # raises TemplateSyntaxError
        # Most messages have no template syntax: render those once, here, not on every turn.
        has_syntax = any(mark in source for mark in ("{{", "{%", "{#"))
        self._constant = None if has_syntax else " ".join(self._tpl.render().split())
        self._globals = dict(env.globals)

    def render_value(self, context: dict[str, Any]) -> Any:
        """What ``set:`` stores: the rendered text."""
        return self.render(context)

    def render(self, context: dict[str, Any]) -> str:
        if self._constant is not None:
            return self._constant
        try:
            # A shared context skips Jinja's per-render merge of globals (half the cost of a
            # render, measured); the globals go in with the turn's own names instead.
            ctx = self._tpl.new_context({**self._globals, **context}, shared=True)
            return " ".join("".join(self._tpl.root_render_func(ctx)).split())
        except jinja2.UndefinedError as exc:
            raise RenderError(f"{exc.message} in template {self.source!r}") from None
        except jinja2.TemplateError as exc:
            raise RenderError(f"{exc} in template {self.source!r}") from None
