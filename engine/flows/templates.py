"""Message templates: Jinja2 in an immutable sandbox, compiled once when a flow loads.

Missing data is an error unless the template gives a default (``{{ contact.first_name |
default("there") }}``): a message that says "Hi ," is worse than no message.
"""

from __future__ import annotations

from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import RenderError


@jinja2.pass_environment
def first_name(env: jinja2.Environment, value: object) -> object:
    """``"ann MARIE smith"`` -> ``"Ann"``: the first word, capitalised.

    Missing or blank data comes out undefined, so ``| first_name | default("there")`` works.
    """
    if isinstance(value, jinja2.Undefined):
        return value
    words = str(value or "").split()
    if not words:
        return env.undefined(name="first_name", hint="the name is blank")
    return words[0][:1].upper() + words[0][1:].lower()


def make_environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True)
    env.filters["first_name"] = first_name
    return env


class Template:
    """A compiled template and the source it came from."""

    __slots__ = ("_tpl", "source")

    def __init__(self, env: jinja2.Environment, source: str) -> None:
        self.source = source
        self._tpl = env.from_string(source)  # raises TemplateSyntaxError

    def render(self, context: dict[str, Any]) -> str:
        try:
            return " ".join(self._tpl.render(context).split())
        except jinja2.UndefinedError as exc:
            raise RenderError(f"{exc.message} in template {self.source!r}") from None
        except jinja2.TemplateError as exc:
            raise RenderError(f"{exc} in template {self.source!r}") from None
