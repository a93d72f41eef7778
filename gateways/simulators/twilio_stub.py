"""A stand-in for Twilio's Messages API on loopback, and a Twilio that calls Parley back.

``POST /2010-04-01/Accounts/{sid}/Messages.json`` checks basic auth (401 with Twilio's error
20003 otherwise), records the form and answers 201 ``{"sid": "SM…", "status": "queued", …}`` as
Twilio does. ``fail_next`` makes the next requests fail: ``(status, body)`` or ``(status, body,
headers)``, the body a dict (sent as JSON, e.g. Twilio's ``{"code": 21211, "message": …}``) or
bytes; ``delay`` slows every answer down. ``on_create`` is called with each message taken,
after it is kept and before the answer goes (a test kills the caller there: the message is
sent, the caller never hears of it).

The messages taken can be read back as from Twilio's Message resource:

- ``GET …/Messages.json``: newest first, filtered by ``To``, ``From``, ``DateSent`` (a day,
  ``YYYY-MM-DD``, or a time ``YYYY-MM-DDTHH:MM:SSZ``) and its range forms ``DateSent<`` and
  ``DateSent>`` (on or before / on or after; a message not sent yet has no ``date_sent`` and is
  left out by them), in pages of ``PageSize`` (default 50, at most 1000) with Twilio's paging
  fields (``next_page_uri`` is null on the last page, ``PageToken`` an opaque ``PA…``);
- ``GET …/Messages/{MessageSid}.json``: one message, or 404 with Twilio's error 20404.

Dates are in Twilio's RFC 2822 form (``Tue, 01 Dec 2026 20:39:48 +0000``).

As Twilio, it calls Parley: :meth:`TwilioStub.text_in` (an inbound text) and
:meth:`TwilioStub.status_callback` POST forms signed with ``X-Twilio-Signature``, computed here
from Twilio's published scheme, not with Parley's connector code, so tests check that both agree.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email.utils
import hashlib
import hmac
import itertools
import secrets
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from gateways.simulators.loopback import LoopbackServer


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """Base64 HMAC-SHA1 (key: the auth token) of the URL, then each POST parameter name and
    value, sorted by name."""
    payload = url
    for name in sorted(params):
        payload += name + params[name]
    digest = hmac.new(auth_token.encode("utf-8"), payload.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True)
class Received:
    """One Messages API request as the stub saw it."""

    account_sid: str
    form: dict[str, str]
    headers: dict[str, str]
    auth: tuple[str, str] | None
    sid: str = ""


@dataclass
class Callback:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _date_check(name: str, value: str) -> Callable[[str | None], bool]:
    """Twilio's ``DateSent`` filters: a day or a time in UTC; ``<`` on or before, ``>`` on or after.
    A message not sent yet (no ``date_sent``) never matches."""
    day = len(value) == 10
    when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)

    def check(date_sent: str | None) -> bool:
        if date_sent is None:
            return False
        sent = email.utils.parsedate_to_datetime(date_sent)
        if day:
            if name == "DateSent":
                return sent.date() == when.date()
            return sent.date() <= when.date() if name == "DateSent<" else sent.date() >= when.date()
        if name == "DateSent":
            return sent == when
        return sent <= when if name == "DateSent<" else sent >= when

    return check


class TwilioStub(LoopbackServer):
    """``async with TwilioStub(account_sid, auth_token) as twilio: twilio.base_url``."""

    def __init__(self, account_sid: str = "AC" + "0" * 32, auth_token: str = "twilio-token") -> None:
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token
        #: Seconds every answer waits (longer than the client's timeout: a timeout).
        self.delay = 0.0
        self.received: list[Received] = []
        self.fail_next: list[tuple[Any, ...]] = []
        self.on_create: Callable[[Received], None] | None = None
        #: Unix seconds (a test may move Twilio's clock).
        self.now: Callable[[], float] = time.time
        #: Every message taken, as the Message resource shows it, oldest first.
        self.messages: list[dict[str, Any]] = []
        self.lookups = 0
        self._sids = itertools.count(1)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._create)
        app.router.add_get("/2010-04-01/Accounts/{sid}/Messages.json", self._list)
        app.router.add_get("/2010-04-01/Accounts/{sid}/Messages/{message}.json", self._fetch)

    @staticmethod
    def _error(status: int, code: int, message: str) -> web.Response:
        body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status}  # fmt: skip
        return web.json_response(body, status=status)

    async def _create(self, request: web.Request) -> web.Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        form = {k: str(v) for k, v in (await request.post()).items()}
        auth: tuple[str, str] | None = None
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            auth = (user, password)
        path_sid = request.match_info["sid"]
        if self.fail_next:
            status, body, *rest = self.fail_next.pop(0)
            headers = rest[0] if rest else {}
            self.received.append(Received(path_sid, form, dict(request.headers), auth))
            raw = orjson.dumps(body) if isinstance(body, dict) else body
            return web.Response(status=status, body=raw, headers=headers, content_type="application/json")
        if auth != (self.account_sid, self.auth_token) or path_sid != self.account_sid:
            return self._error(401, 20003, "Authenticate")
        if "To" not in form or not ("From" in form or "MessagingServiceSid" in form):
            return self._error(400, 21604 if "To" not in form else 21603, "A 'To' and a 'From' are required")
        sid = f"SM{next(self._sids):032x}"
        got = Received(path_sid, form, dict(request.headers), auth, sid)
        self.received.append(got)
        created = email.utils.formatdate(self.now(), usegmt=False).replace("-0000", "+0000")
        resource = {
            "sid": sid, "account_sid": self.account_sid, "api_version": "2010-04-01",
            "to": form["To"], "from": form.get("From"), "body": form.get("Body", ""),
            "messaging_service_sid": form.get("MessagingServiceSid"), "direction": "outbound-api",
            "num_segments": "1", "num_media": "0", "price": None, "price_unit": "USD",
            "error_code": None, "error_message": None,
            "date_created": created, "date_updated": created, "date_sent": None, "status": "queued",
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
        }  # fmt: skip
        self.messages.append(resource)
        if self.on_create is not None:
            self.on_create(got)
        answer = dict(resource)
        # Twilio hands it to the carrier a moment later: the resource then shows it sent.
        resource |= {"status": "sent", "date_sent": created}
        return web.json_response(answer, status=201)

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return (user, password) == (self.account_sid, self.auth_token) and (
            request.match_info["sid"] == self.account_sid
        )

    async def _fetch(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._error(401, 20003, "Authenticate")
        self.lookups += 1
        for m in self.messages:
            if m["sid"] == request.match_info["message"]:
                return web.json_response(m)
        return self._error(404, 20404, f"The requested resource {request.path} was not found")

    async def _list(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._error(401, 20003, "Authenticate")
        self.lookups += 1
        q = request.query
        try:
            size = min(int(q.get("PageSize", "50")), 1000)
            page = int(q.get("Page", "0"))
            checks = [
                _date_check(name, q[name]) for name in ("DateSent", "DateSent<", "DateSent>") if name in q
            ]
        except ValueError as exc:
            return self._error(400, 20001, f"Invalid parameter: {exc}")
        if size < 1:
            return self._error(400, 20001, "PageSize must be at least 1")
        chosen = [
            m for m in reversed(self.messages)
            if q.get("To", m["to"]) == m["to"] and q.get("From", m["from"]) == m["from"]
            and all(check(m["date_sent"]) for check in checks)
        ]  # fmt: skip
        start = page * size
        window = chosen[start : start + size]
        path = request.path

        def page_uri(n: int) -> str:
            params = [(k, v) for k, v in q.items() if k not in ("Page", "PageToken", "PageSize")]
            params += [("PageSize", str(size)), ("Page", str(n))]
            if n:
                params.append(("PageToken", f"PA{n * size:032x}"))
            return f"{path}?{urllib.parse.urlencode(params)}"

        return web.json_response({
            "messages": window, "page": page, "page_size": size, "start": start,
            "end": start + max(len(window) - 1, 0), "uri": page_uri(page), "first_page_uri": page_uri(0),
            "next_page_uri": page_uri(page + 1) if start + size < len(chosen) else None,
            "previous_page_uri": page_uri(page - 1) if page else None,
        })  # fmt: skip

    async def post_signed(
        self, url: str, params: dict[str, str], *, signed_url: str | None = None, signature: str | None = None
    ) -> Callback:
        """POST ``params`` as a form to ``url`` with Twilio's signature of ``signed_url`` (the URL
        Twilio was configured with, when a proxy stands between: defaults to ``url``)."""
        assert self._client is not None
        sig = signature if signature is not None else twilio_signature(
            self.auth_token, signed_url or url, params
        )  # fmt: skip
        headers = {"X-Twilio-Signature": sig, "User-Agent": "TwilioProxy/1.1"}
        async with self._client.post(url, data=params, headers=headers) as resp:
            return Callback(resp.status, await resp.read(), dict(resp.headers))

    def inbound_form(self, sender: str, to: str, body: str, sid: str = "") -> dict[str, str]:
        """The form Twilio posts for a text to one of our numbers."""
        sid = sid or "SM" + secrets.token_hex(16)
        return {
            "ToCountry": "US", "ToState": "CA", "SmsMessageSid": sid, "NumMedia": "0", "ToCity": "",
            "FromZip": "", "SmsSid": sid, "FromState": "", "SmsStatus": "received", "FromCity": "",
            "Body": body, "FromCountry": "GB", "To": to, "MessagingServiceSid": "", "ToZip": "",
            "NumSegments": "1", "MessageSid": sid, "AccountSid": self.account_sid, "From": sender,
            "ApiVersion": "2010-04-01",
        }  # fmt: skip

    async def text_in(
        self, url: str, sender: str, to: str, body: str, *, sid: str = "", signed_url: str | None = None
    ) -> Callback:
        return await self.post_signed(url, self.inbound_form(sender, to, body, sid), signed_url=signed_url)

    async def status_callback(
        self, url: str, sid: str, status: str, *, error_code: str = "", signed_url: str | None = None
    ) -> Callback:
        params = {
            "SmsSid": sid, "SmsStatus": status, "MessageStatus": status, "To": "+447700900123",
            "MessageSid": sid, "AccountSid": self.account_sid, "From": "+15005550006",
            "ApiVersion": "2010-04-01",
        }  # fmt: skip
        if error_code:
            params["ErrorCode"] = error_code
        return await self.post_signed(url, params, signed_url=signed_url)
