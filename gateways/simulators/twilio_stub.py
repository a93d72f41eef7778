"""A stand-in for Twilio's Messages API on loopback, and a Twilio that calls Parley back.

``POST /2010-04-01/Accounts/{sid}/Messages.json`` checks basic auth (401 with Twilio's error
20003 otherwise), records the form and answers 201 ``{"sid": "SM…", "status": "queued", …}`` as
Twilio does. ``fail_next`` makes the next requests fail: ``(status, body)`` or ``(status, body,
headers)``, the body a dict (sent as JSON, e.g. Twilio's ``{"code": 21211, "message": …}``) or
bytes; ``delay`` slows every answer down.

As Twilio, it calls Parley: :meth:`TwilioStub.text_in` (an inbound text) and
:meth:`TwilioStub.status_callback` POST forms signed with ``X-Twilio-Signature``, computed here
from Twilio's published scheme, not with Parley's connector code, so tests check that both agree.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import secrets
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
        self._sids = itertools.count(1)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._create)

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
        self.received.append(Received(path_sid, form, dict(request.headers), auth, sid))
        return web.json_response(
            {"sid": sid, "status": "queued", "to": form["To"], "from": form.get("From"),
             "body": form.get("Body"), "account_sid": self.account_sid, "num_segments": "1"},
            status=201,
        )  # fmt: skip

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
