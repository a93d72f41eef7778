"""Pages: one Jinja2 environment (autoescaped; not the flows' sandbox, these templates are ours)
over ``engine/console/templates``. A page extends ``base.html`` and fills its blocks::

    {% extends "base.html" %}
    {% block title %}Flows{% endblock %}
    {% block content %}<h1>Flows</h1>...{% endblock %}

and its handler says ``return await render(request, "flows.html", flows=rows, page="flows")`` (``page``:
the nav entry shown as current; ``status`` sets the HTTP status). Every template gets:

- ``me``: the logged-in user (``me.name``, ``me.role``), or None on the login page;
- ``can("operator")``: whether the user has that role (hide what the role cannot do; the route
  refuses it anyway);
- ``csrf_field()``: the hidden ``csrf`` input every POST form carries; ``csrf_token``: the token;
- ``nav``: the pages, as ``(key, label, href)``; ``static(path)``: a static asset's URL;
- the filter ``num``: a phone number, masked for everyone (``+4477•••••123``), with a "show"
  button for operators and admins that unmasks it through ``POST /console/api/unmask`` (audited).
  ``{{ n|num(full=True) }}`` shows operators and admins the whole number at once (where they
  work with it: the inbox), still masked for viewers;
- the filters ``ms`` (a duration in ms, ``"12.3 ms"``) and ``when`` (Unix ms -> UTC time).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import jinja2
from aiohttp import web
from markupsafe import Markup

from engine.console.auth import maybe_user
from engine.console.masking import load_secret, mask, seal
from engine.console.web import PREFIX, state

#: The nav, in order: (key, label, path under /console). Pages not built yet answer 404.
NAV: list[tuple[str, str, str]] = [
    ("overview", "Overview", "/"),
    ("conversations", "Conversations", "/conversations"),
    ("inbox", "Inbox", "/inbox"),
    ("flows", "Flows", "/flows"),
    ("journeys", "Journeys", "/journeys"),
    ("reports", "Reports", "/reports"),
    ("gateways", "Gateways", "/gateways"),
]
#: Shown to admins only.
ADMIN_NAV: list[tuple[str, str, str]] = [("audit", "Audit", "/audit")]

ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("engine.console", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@jinja2.pass_context
def _num(ctx: jinja2.runtime.Context, number: Any, full: bool = False) -> Markup:
    if not number:
        return Markup("")
    text = str(number)
    me = ctx.get("me")
    if me is None or not me.can("operator"):
        return Markup('<span class="num">{}</span>').format(mask(text))
    if full:
        return Markup('<span class="num">{}</span>').format(text)
    ref = seal(ctx["unmask_key"], text)
    return Markup(
        '<span class="num" data-ref="{ref}">{m}</span>'
        '<button type="button" class="unmask" data-ref="{ref}" title="Show the number (audited)">'
        "show</button>"
    ).format(ref=ref, m=mask(text))


def _ms(value: Any) -> str:
    if value is None:
        return "-"
    v = float(value)
    return f"{v:.0f} ms" if v >= 100 else f"{v:.1f} ms"


def _when(ms: Any) -> str:
    if not ms:
        return "-"
    t = dt.datetime.fromtimestamp(int(ms) / 1000, tz=dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S")


ENV.filters["num"] = _num
ENV.filters["ms"] = _ms
ENV.filters["when"] = _when


def url(path: str) -> str:
    """A console URL: ``url("/flows")`` -> ``/console/flows``."""
    return PREFIX + path


def page_html(request: web.Request, template: str, ctx: dict[str, Any]) -> str:
    """``template`` rendered with the console's common context (see the module docstring)."""
    me = maybe_user(request)
    nav = NAV + (ADMIN_NAV if me is not None and me.can("admin") else [])
    common: dict[str, Any] = {
        "me": me,
        "can": lambda role: me is not None and me.can(role),
        "csrf_token": me.csrf if me else "",
        "csrf_field": lambda: Markup('<input type="hidden" name="csrf" value="{}">').format(
            me.csrf if me else ""
        ),
        "nav": [(k, label, url(p)) for k, label, p in nav],
        "page": "",
        "url": url,
        "static": lambda path: f"{PREFIX}/static/{path}",
        "unmask_key": state(request).secret,
        "users_configured": bool(state(request).users),
    }
    common.update(ctx)
    return ENV.get_template(template).render(common)


async def render(request: web.Request, template: str, *, status: int = 200, **ctx: Any) -> web.Response:
    """An HTML response of ``template`` (extending base.html) with ``ctx`` and the common context."""
    if maybe_user(request) is not None:
        await load_secret(request)  # the num filter's key, read once per process
    return web.Response(
        text=page_html(request, template, ctx), status=status, content_type="text/html", charset="utf-8"
    )
