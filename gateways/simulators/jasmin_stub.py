"""A stand-in for Jasmin's HTTP API on loopback, and a Jasmin that calls Parley back.

``POST /send`` (form or query) checks the user (403 ``Error "Authentication failure for
username:…"``), that exactly one of ``content`` and ``hex-content`` is there (400), records the
arguments and answers ``Success "<uuid>"`` as Jasmin does. ``fail_next`` makes the next requests
fail: ``(status, body)`` or ``(status, body, headers)``, e.g. ``(412, 'Error "No route found"')``.

As Jasmin's throwers it calls Parley: :meth:`JasminStub.report` POSTs a delivery report for an
accepted message to the ``dlr-url`` it was given (or another URL), :meth:`JasminStub.text_in`
an SMS-MO with ``content`` (the raw bytes) and ``binary`` (their hex), with basic auth when
``webhook_auth`` is set (which a proxy in front of Parley adds in production: Jasmin sends none).
"""

from __future__ import annotations

import binascii
import itertools
import urllib.parse
import uuid
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from gateways.simulators.loopback import LoopbackServer


@dataclass(frozen=True)
class Received:
    """One /send request's arguments, and the id answered (empty when it failed)."""

    args: dict[str, str]
    headers: dict[str, str]
    message_id: str = ""


@dataclass
class Callback:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def acked(self) -> bool:
        """What Jasmin checks before it stops retrying: 200 and exactly ``ACK/Jasmin``."""
        return self.status == 200 and self.body.strip() == b"ACK/Jasmin"


class JasminStub(LoopbackServer):
    """``async with JasminStub("parley", "secret") as jasmin: jasmin.url``."""

    def __init__(self, username: str = "parley", password: str = "jpass") -> None:
        super().__init__()
        self.username = username
        self.password = password
        self.received: list[Received] = []
        self.fail_next: list[tuple[int, str] | tuple[int, str, dict[str, str]]] = []
        self.webhook_auth: tuple[str, str] | None = None
        self._mo_ids = itertools.count(1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/send", self._send)

    @staticmethod
    def _answer(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(status=status, text=text, headers=headers, content_type="text/plain")

    async def _send(self, request: web.Request) -> web.Response:
        args = dict(request.query)
        if request.method == "POST":
            args |= {k: str(v) for k, v in (await request.post()).items()}
        if self.fail_next:
            status, body, *rest = self.fail_next.pop(0)
            self.received.append(Received(args, dict(request.headers)))
            return self._answer(status, body, rest[0] if rest else None)
        for key in ("username", "password", "to"):
            if key not in args:
                self.received.append(Received(args, dict(request.headers)))
                return self._answer(400, f'Error "Mandatory argument {key} is not found."')
        if (args["username"], args["password"]) != (self.username, self.password):
            self.received.append(Received(args, dict(request.headers)))
            return self._answer(403, f'Error "Authentication failure for username:{args["username"]}"')
        if ("content" in args) == ("hex-content" in args):
            self.received.append(Received(args, dict(request.headers)))
            if "content" in args:
                both = "content and hex-content cannot be used both in same request."
                return self._answer(400, f'Error "{both}"')
            return self._answer(400, 'Error "content or hex-content not present."')
        message_id = str(uuid.uuid4())
        self.received.append(Received(args, dict(request.headers), message_id))
        return self._answer(200, f'Success "{message_id}"')

    def sent(self, message_id: str) -> Received:
        return next(r for r in self.received if r.message_id == message_id)

    async def _post_form(self, url: str, pairs: list[tuple[str, str | bytes]]) -> Callback:
        assert self._client is not None
        headers = {
            "Content-Type": "application/x-www-form-urlencoded", "Accept": "text/plain",
            "User-Agent": "Jasmin gateway/1.0 stub",
        }  # fmt: skip
        if self.webhook_auth:
            headers["Authorization"] = aiohttp.encode_basic_auth(*self.webhook_auth)
        body = urllib.parse.urlencode(pairs)  # bytes values are percent-encoded as they are
        async with self._client.post(url, data=body.encode("ascii"), headers=headers) as resp:
            return Callback(resp.status, await resp.read(), dict(resp.headers))

    async def report(
        self,
        message_id: str,
        message_status: str,
        *,
        level: int | None = None,
        err: str = "000",
        url: str | None = None,
    ) -> Callback:
        """A DLR for ``message_id``: ``level`` 1 carries a submit_sm_resp status (``ESME_ROK``),
        2 a receipt state (``DELIVRD``); by default it follows the status's kind."""
        sent = self.sent(message_id)
        level = level if level is not None else (1 if message_status.startswith("ESME_") else 2)
        pairs: list[tuple[str, str | bytes]] = [
            ("id", message_id), ("level", str(level)), ("message_status", message_status),
            ("connector", "smsc01"),
        ]  # fmt: skip
        if level in (2, 3):
            pairs += [
                ("id_smsc", "2567"), ("sub", "001"),
                ("dlvrd", "001" if message_status == "DELIVRD" else "000"),
                ("subdate", "2611221200"), ("donedate", "2611221201"), ("err", err),
                ("text", sent.args.get("content", "")[:20]),
            ]  # fmt: skip
        return await self._post_form(url or sent.args["dlr-url"], pairs)

    async def text_in(
        self, url: str, sender: str, to: str, text: str, *, coding: int = 0, message_id: str = ""
    ) -> Callback:
        """An SMS-MO as Jasmin's deliverSmHttpThrower posts it: ``content`` is the short message's
        bytes (UTF-16-BE for coding 8, Latin-1 for 3, else GSM text as ASCII/UTF-8 here)."""
        raw = text.encode("utf-16-be" if coding == 8 else "latin-1" if coding == 3 else "utf-8")
        pairs: list[tuple[str, str | bytes]] = [
            ("id", message_id or str(uuid.uuid4())), ("from", sender), ("to", to),
            ("origin-connector", "smsc01"), ("content", raw), ("binary", binascii.hexlify(raw)),
            ("priority", "0"), ("coding", str(coding)),
        ]  # fmt: skip
        return await self._post_form(url, pairs)
