"""Message templates: Jinja2 in an immutable sandbox, compiled once when a flow loads.

Missing data is an error unless the template gives a default (``{{ contact.first_name |
default("there") }}``): a message that says "Hi ," is worse than no message.
"""

from __future__ import annotations

import datetime as dt
import string
from typing import Any

import jinja2
from jinja2 import meta

from engine.core.errors import RenderError
from engine.flows.sandbox import MAX_VALUE, BoundedSandbox, ValueTooBig


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


def make_environment() -> BoundedSandbox:
    env = BoundedSandbox(undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True)
    env.filters["first_name"] = first_name
    env.filters["datetime"] = datetime_filter
    env.filters["currency"] = currency
    return env


class Template:
    """A compiled template and the source it came from.

    Compiling raises ``TemplateSyntaxError`` for bad syntax, and a template that uses no data
    (only constants and Jinja's globals) is rendered once here, so one that can never render
    (``{{ 'a' * 10**9 }}``, ``{{ range(10**9) | list }}``) raises :class:`RenderError` at load
    rather than failing every conversation that reaches it."""

    __slots__ = ("_constant", "_globals", "_tpl", "source")

    def __init__(self, env: jinja2.Environment, source: str) -> None:
        self.source = source
        self._tpl = env.from_string(source)  # raises TemplateSyntaxError
        self._globals = dict(env.globals)
        self._constant: str | None = None
        # Most messages have no template syntax, and some use no data: render those once, here,
        # not on every turn.
        has_syntax = any(mark in source for mark in ("{{", "{%", "{#"))
        if not has_syntax or meta.find_undeclared_variables(env.parse(source)) <= set(env.globals):
            self._constant = self._render({})

    @property
    def constant(self) -> str | None:
        """The message, when it is the same for every contact (rendered at load)."""
        return self._constant

    def render_value(self, context: dict[str, Any]) -> Any:
        """What ``set:`` stores: the rendered text."""
        return self.render(context)

    def render(self, context: dict[str, Any]) -> str:
        """The message for this context, whitespace collapsed; :class:`RenderError` if it fails."""
        if self._constant is not None:
            return self._constant
        return self._render(context)

    def _render(self, context: dict[str, Any]) -> str:
        try:
            # A shared context skips Jinja's per-render merge of globals (half the cost of a
            # render, measured); the globals go in with the turn's own names instead.
            ctx = self._tpl.new_context({**self._globals, **context}, shared=True)
            parts: list[str] = []
            size = 0
            for chunk in self._tpl.root_render_func(ctx):  # stopped early if it grows too long
                size += len(chunk)
                if size > MAX_VALUE:
                    raise RenderError(f"the message is over {MAX_VALUE:,} characters long", self.source)
                parts.append(chunk)
            return " ".join("".join(parts).split())
        except RenderError:
            raise
        except jinja2.UndefinedError as exc:
            raise RenderError(exc.message or "a value is missing", self.source) from None
        except ValueTooBig as exc:
            raise RenderError(str(exc), self.source) from None
        except RecursionError:
            raise RenderError("too deep a recursion (a macro calling itself?)", self.source) from None
        except MemoryError:
            raise RenderError("out of memory", self.source) from None
        except Exception as exc:  # a template is data: any failure fails this render, not the turn
            raise RenderError(f"{type(exc).__name__}: {exc}", self.source) from None
