"""Mounting the console on the engine's aiohttp app (``/console/``, api-role processes only).

The runtime builds the API app, then calls :func:`add_console`; the console is a sub-app, so
its middleware (errors as pages, security headers) applies to its routes only, while the API's
own middleware still times every request. The API's bearer check skips ``/console`` (the
console has its own sessions), and the console accepts no API key: the two never open each
other.

Responses carry a Content-Security-Policy allowing scripts and styles from the console itself
(inline styles too, for SVG drawings), no framing, no referrer outside the site, and pages are
not cached.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler as MiddlewareHandler
from redis.exceptions import RedisError

from engine.console.auth import guard
from engine.console.lockout import Lockout
from engine.console.ports import ConsoleServices
from engine.console.render import page_html
from engine.console.routes import ROUTES
from engine.console.sessions import Sessions
from engine.console.web import CONSOLE, PREFIX, ConsoleState, is_api
from engine.core.errors import ApiError

log = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
_TITLES = {401: "Log in first", 403: "Not allowed", 404: "Not found", 405: "Method not allowed",
           413: "Too large", 422: "Invalid", 429: "Too many attempts", 500: "Error"}  # fmt: skip


def _problem(request: web.Request, status: int, code: str, message: str) -> web.Response:
    if is_api(request):
        return web.json_response({"error": {"code": code, "message": message}}, status=status)
    html = page_html(
        request, "error.html", {"status": status, "title": _TITLES.get(status, "Error"), "message": message}
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


@web.middleware
async def pages(request: web.Request, handler: MiddlewareHandler) -> web.StreamResponse:
    """Refusals as the console shows them (a page, or JSON under /api/), and the headers."""
    if request.path == PREFIX:  # the sub-app holds /console itself too (no route of its own)
        return await _to_console(request)
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:  # a redirect, answered here (the API's middleware would make it JSON)
            resp = web.Response(status=exc.status, headers=exc.headers)
            _headers(resp)
            return resp
        code = {401: "unauthorized", 403: "forbidden", 404: "not_found"}.get(exc.status, "http_error")
        resp = _problem(request, exc.status, code, exc.reason)
    except ApiError as exc:
        resp = _problem(request, exc.status, exc.code, exc.message)
    except (RedisError, OSError):
        raise  # the API's middleware answers 503 (storage unavailable)
    except Exception:
        log.exception("console: unhandled error on %s %s", request.method, request.path)
        resp = _problem(request, 500, "internal", "Something went wrong; the server log says what.")
    _headers(resp)
    return resp


def _headers(resp: web.StreamResponse) -> None:
    resp.headers.setdefault("Content-Security-Policy", CSP)
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "same-origin")
    resp.headers.setdefault("X-Frame-Options", "DENY")
    if "Cache-Control" not in resp.headers:
        resp.headers["Cache-Control"] = "no-store"


async def _not_found(request: web.Request) -> web.StreamResponse:
    raise web.HTTPNotFound(reason=f"no console page {request.path}")


async def _to_console(request: web.Request) -> web.StreamResponse:
    return web.Response(status=302, headers={"Location": PREFIX + "/"})


def static_dir() -> Path:
    """The console's shipped assets (package data: engine/console/static)."""
    return Path(str(resources.files("engine.console") / "static"))


def build_console(rt: ConsoleServices) -> web.Application:
    """The console sub-app: its routes (engine/console/routes.py), guarded, and its assets."""
    cfg = rt.config.console
    sub = web.Application(middlewares=[pages])
    sub[CONSOLE] = ConsoleState(
        services=rt,
        users={u.name: u for u in cfg.users},
        sessions=Sessions(rt.store, rt.clock, cfg.session_idle_timeout),
        lockout=Lockout(rt.store, rt.clock, cfg.lockout_attempts, cfg.lockout_window),
    )
    sub.router.add_static("/static", static_dir(), append_version=False)
    for method, path, handler, role in ROUTES:
        if method == "GET":
            sub.router.add_get(path, guard(handler, role))
        else:
            sub.router.add_route(method, path, guard(handler, role))
    sub.router.add_route("*", "/{tail:.*}", guard(_not_found, None))
    return sub


def add_console(app: web.Application, rt: ConsoleServices) -> None:
    """Serve the console under ``/console/`` on ``app`` (the API's app, before it starts)."""
    app.add_subapp(PREFIX, build_console(rt))
    if not rt.config.console.users:
        log.info("console: no users configured (console.users); /console/ lets nobody in")
