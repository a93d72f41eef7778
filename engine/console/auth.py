"""Who is asking, and what they may do: roles, the session check, CSRF.

Roles rank ``viewer < operator < admin``; each may do what the ones below it may. Every route in
engine/console/routes.py names the least role it needs, and :func:`guard` checks it (and the
CSRF token of every POST) before the handler runs, so a viewer who crafts an operator's request
gets 403 whatever the page showed. Inside a handler:

    me = require(request, "operator")      # 403 unless operator or admin; returns the user
    if can(request, "admin"): ...           # the same test, as a bool
    me = user(request)                      # who is logged in (the route's guard made sure)

Templates get ``can("operator")`` and ``csrf_field()`` (engine/console/render.py). Forms post the
hidden field ``csrf``; scripts send the header ``X-CSRF-Token`` (console.js does, reading the
page's ``<meta name="csrf-token">``).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web

from engine.console.sessions import Session
from engine.console.web import COOKIE, PREFIX, is_api, state
from engine.core.config import CONSOLE_ROLES

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RANK = {role: i for i, role in enumerate(CONSOLE_ROLES)}


@dataclass(frozen=True)
class User:
    """A logged-in console user: name, role (from the configuration, read on every request, so
    a role changed in the config applies at once), and the session."""

    name: str
    role: str
    session: Session

    @property
    def csrf(self) -> str:
        return self.session.csrf

    def can(self, role: str) -> bool:
        return RANK[self.role] >= RANK[role]


#: Where the logged-in user is kept on the request.
_USER: web.RequestKey[User] = web.RequestKey("console_user", User)


class LoginRequired(web.HTTPUnauthorized):
    """No session (or an expired one): a page redirects to the login form, JSON gets 401."""


def user(request: web.Request) -> User:
    """The logged-in user (routes with a role only; the guard put it there)."""
    return request[_USER]


def maybe_user(request: web.Request) -> User | None:
    """The logged-in user, or None on the routes open to all (the login page)."""
    return request.get(_USER)


def can(request: web.Request, role: str) -> bool:
    me = maybe_user(request)
    return me is not None and me.can(role)


def require(request: web.Request, role: str) -> User:
    """The user, if it has ``role`` (or a higher one); else 403."""
    me = user(request)
    if not me.can(role):
        raise web.HTTPForbidden(reason=f"this needs the {role} role (you are {me.role})")
    return me


async def check_csrf(request: web.Request, expected: str) -> None:
    """403 unless the request carries ``expected`` in ``X-CSRF-Token`` or the form field ``csrf``."""
    sent = request.headers.get("X-CSRF-Token", "")
    if not sent and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()  # kept by aiohttp: the handler reads it again for free
        value = form.get("csrf", "")
        sent = value if isinstance(value, str) else ""
    if not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise web.HTTPForbidden(reason="missing or wrong CSRF token: reload the page and try again")


async def load_user(request: web.Request) -> User | None:
    """The session of the request's cookie, if it is alive and its user still configured."""
    st = state(request)
    token = request.cookies.get(COOKIE, "")
    session = await st.sessions.get(token) if token else None
    if session is None:
        return None
    configured = st.users.get(session.user)
    if configured is None:  # removed from the configuration: the session opens nothing
        await st.sessions.drop(session)
        return None
    return User(session.user, configured.role, session)


def guard(handler: Handler, min_role: str | None) -> Handler:
    """``handler`` behind the route's checks: a live session whose user has ``min_role``, and
    on POST the session's CSRF token. ``None``: open to all (the login form checks its own)."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        if min_role is None:
            me = await load_user(request)
            if me is not None:
                request[_USER] = me
            return await handler(request)
        me = await load_user(request)
        if me is None:
            if is_api(request) or request.method != "GET":
                raise LoginRequired(reason="log in first (your session is over or you logged out)")
            target = request.path_qs
            raise web.HTTPFound(f"{PREFIX}/login?next={quote(target, safe='')}")
        request[_USER] = me
        if not me.can(min_role):
            raise web.HTTPForbidden(reason=f"this needs the {min_role} role (you are {me.role})")
        if request.method == "POST":
            await check_csrf(request, me.csrf)
        return await handler(request)

    guarded.__name__ = getattr(handler, "__name__", "handler")
    guarded.__doc__ = handler.__doc__
    return guarded
