"""The console's state on the aiohttp app, and the small accessors every page uses.

``services(request)`` is the engine (what the /v1 handlers are handed); ``state(request)`` the
console's own parts: users, sessions, lockout, the unmask key."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from engine.console.lockout import Lockout
from engine.console.ports import ConsoleServices
from engine.console.sessions import Sessions
from engine.core.config import ConsoleUser

#: The session cookie (HttpOnly, SameSite=Strict, path /console, Secure behind TLS).
COOKIE = "parley_console"
#: The login form's own CSRF cookie (double submit: there is no session yet).
LOGIN_COOKIE = "parley_console_login"
#: Where the console lives.
PREFIX = "/console"


@dataclass
class ConsoleState:
    """The console's parts, built once by ``add_console``."""

    services: ConsoleServices
    users: dict[str, ConsoleUser]
    sessions: Sessions
    lockout: Lockout
    #: The key of the unmask references (``p:csecret``), read from Redis on first use.
    secret: bytes = b""
    extra: dict[str, object] = field(default_factory=dict)


CONSOLE: web.AppKey[ConsoleState] = web.AppKey("console")


def state(request: web.Request) -> ConsoleState:
    return request.config_dict[CONSOLE]


def services(request: web.Request) -> ConsoleServices:
    """The engine: config, store, clock, flows, gateways... (what the /v1 handlers use)."""
    return request.config_dict[CONSOLE].services


def is_api(request: web.Request) -> bool:
    """A JSON endpoint (``/console/api/...``): errors are JSON, not pages."""
    return request.path.startswith(PREFIX + "/api/")
