"""Logging in and out.

The login form carries its own CSRF token (a cookie and a hidden field that must match: there
is no session yet). A good login starts a session (engine/console/sessions.py) and sets the
``parley_console`` cookie: HttpOnly, SameSite=Strict, path /console, Secure over TLS or with
``console.secure_cookies``. Failures count towards the lockout (engine/console/lockout.py).
Everything lands in the audit log: ``login``, ``login.failed``, ``lockout``, ``login.locked``
(an attempt while locked out), ``logout``.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets

from aiohttp import web

from engine.console.audit import audit
from engine.console.auth import maybe_user, user
from engine.console.passwords import verify_password
from engine.console.render import render, url
from engine.console.web import COOKIE, LOGIN_COOKIE, PREFIX, services, state

#: The longest user name or password the form takes (argon2 is fed nothing bigger).
MAX_FIELD = 1024


def _next(value: str) -> str:
    """Where to go after logging in: a console path, never another site (``//evil``)."""
    if value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return url("/")


def redirect(location: str) -> web.Response:
    """303 See Other to ``location`` (a response, not raised: it carries cookies)."""
    return web.Response(status=303, headers={"Location": location})


def _secure(request: web.Request) -> bool:
    return request.secure or services(request).config.console.secure_cookies


def _set_cookie(request: web.Request, resp: web.StreamResponse, name: str, value: str) -> None:
    resp.set_cookie(name, value, path=PREFIX, httponly=True, samesite="Strict", secure=_secure(request))


async def _form(request: web.Request, *, error: str = "", name: str = "", nxt: str = "",
                status: int = 200) -> web.Response:  # fmt: skip
    token = secrets.token_urlsafe(24)
    resp = await render(
        request, "login.html", status=status, error=error, name=name, next=_next(nxt), login_csrf=token
    )
    _set_cookie(request, resp, LOGIN_COOKIE, token)
    return resp


async def get_login(request: web.Request) -> web.StreamResponse:
    """The login form (already logged in: straight on)."""
    nxt = request.query.get("next", "")
    if maybe_user(request) is not None:
        raise web.HTTPFound(_next(nxt))
    return await _form(request, nxt=nxt)


async def post_login(request: web.Request) -> web.StreamResponse:
    """Check the form's token, the lockout, then the password; start a session."""
    form = await request.post()
    name, password, sent, nxt = (str(form.get(k, "")) for k in ("user", "password", "csrf", "next"))
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise web.HTTPForbidden(reason="missing or wrong CSRF token: reload the login page and try again")
    name = name.strip()
    if not name or not password or len(name) > MAX_FIELD or len(password) > MAX_FIELD:
        return await _form(request, error="Give a user name and a password.", name=name[:64], nxt=nxt,
                           status=422)  # fmt: skip
    st = state(request)
    until = await st.lockout.locked_until(name)
    if until is not None:
        await audit(request, "login.locked", user=name)
        return await _form(request, error=_locked_text(request, until), name=name, nxt=nxt, status=429)
    configured = st.users.get(name)
    if not await verify_password(configured.password_hash if configured else None, password):
        locked = await st.lockout.failed(name)
        await audit(request, "login.failed", user=name)
        if locked:
            await audit(request, "lockout", user=name)
            until = await st.lockout.locked_until(name)
            if until is not None:
                return await _form(request, error=_locked_text(request, until), name=name, nxt=nxt,
                                   status=429)  # fmt: skip
        return await _form(request, error="Wrong user name or password.", name=name, nxt=nxt, status=401)
    await st.lockout.succeeded(name)
    token, _session = await st.sessions.create(name)
    await audit(request, "login", user=name)
    resp = redirect(_next(nxt))
    _set_cookie(request, resp, COOKIE, token)
    resp.del_cookie(LOGIN_COOKIE, path=PREFIX)
    return resp


def _locked_text(request: web.Request, until_ms: int) -> str:
    left = max(1, -(-(until_ms - services(request).clock.now_ms()) // 60_000))
    at = dt.datetime.fromtimestamp(until_ms / 1000, tz=dt.UTC).strftime("%H:%M UTC")
    return f"Too many failed logins for this user: locked until {at} (about {left} min)."


async def post_logout(request: web.Request) -> web.StreamResponse:
    """End the session on the server (its cookie opens nothing afterwards) and clear the cookie."""
    me = user(request)
    await state(request).sessions.drop(me.session)
    await audit(request, "logout")
    resp = redirect(url("/login"))
    resp.del_cookie(COOKIE, path=PREFIX)
    return resp
