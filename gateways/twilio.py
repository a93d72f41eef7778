"""Twilio's Programmable Messaging API (or any provider that copies its shape).

Sending: ``POST {base_url}/2010-04-01/Accounts/{account_sid}/Messages.json``, form-encoded
``To``, ``From`` (our ``sender``) and/or ``MessagingServiceSid``, ``Body`` and, when
``public_url`` is set and ``status_callback`` is on, ``StatusCallback =
{public_url}/v1/receipts/NAME``; HTTP basic auth ``account_sid:auth_token``. A 2xx answer is JSON
carrying the message's ``sid``. Failures map as for every HTTP connector (429 a rate signal, 503
retryable and not taken, other 5xx retryable but maybe taken, other 4xx rejected) and a
rejection names Twilio's error code and message (``Twilio error 21211: The 'To' number … is
not a valid phone number``).
Twilio takes no idempotency key on this call, so before sending again a message it may already
have (read back after a crash, or after a timeout or a 500) the pipeline asks it
(:meth:`TwilioGateway.find_sent`): ``GET Messages.json?To=…&From=…`` (``From`` left out with a
Messaging Service), newest first, page after page until the messages are older than the one we
look for; an outbound message with the same ``Body`` (and Messaging Service) created since is
it. The Message resource carries nothing of ours (no reference, no callback URL), so the text,
recipient, sender and time are the match; the pipeline leaves out the sids its other messages
already own.

Webhooks: point the number's (or Messaging Service's) "a message comes in" webhook at
``{public_url}/v1/inbound/NAME`` (HTTP POST). Inbound texts are forms with ``From``, ``To``,
``Body``, ``MessageSid``, answered with an empty TwiML ``<Response/>`` (Parley replies through
the API, not through TwiML). Status callbacks are forms with ``MessageSid``, ``MessageStatus``
and ``ErrorCode``; ``delivered`` → delivered, ``undelivered``, ``failed`` and ``canceled`` →
failed, ``sent`` → sent; the in-between statuses (``queued``, ``accepted``, ``sending``, …)
record nothing.

Both are checked with Twilio's request signature: ``X-Twilio-Signature`` is the base64
HMAC-SHA1, keyed with ``auth_token``, of the URL Twilio called followed by every POST parameter
sorted by name, each as name then value. The URL must be exactly the one configured at Twilio,
so behind a proxy ``public_url`` must be the scheme and host Twilio uses. The scheme has no
timestamp, so a captured request can be replayed; that is harmless here: an inbound text is taken
once per ``MessageSid`` (a replay is a duplicate) and a receipt never moves a message's status
backwards.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass

import aiohttp
import orjson

from engine.core.config import Duration
from engine.core.errors import (
    ConfigError,
    GatewayRejected,
    GatewayUnavailable,
    Unprocessable,
    WebhookRejected,
)
from gateways.base import InboundText, OutboundMessage, Receipt, SendResult, Webhook, WebhookAnswer
from gateways.http_common import HttpConnector

SIGNATURE_HEADER = "X-Twilio-Signature"
EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
#: Twilio's message statuses that mean something for our record.
STATUS_MAP = {
    "delivered": "delivered",
    "undelivered": "failed",
    "failed": "failed",
    "canceled": "failed",
    "sent": "sent",
}
#: Statuses on the way (or of inbound messages): answered 200, nothing recorded.
#: Pages of the Messages list read looking for one message (50 messages a page).
LOOKUP_PAGES = 10
IN_BETWEEN = frozenset(
    {"queued", "accepted", "sending", "scheduled", "receiving", "received", "read", "partially_delivered"}
)


@dataclass(frozen=True)
class TwilioConfig:
    #: The account (``AC…``): the path of the Messages resource and the basic-auth user.
    account_sid: str
    #: The account's auth token: the basic-auth password and the webhook signing key.
    auth_token: str
    #: Our number or alphanumeric sender id (``From``); needed unless ``messaging_service_sid`` is set.
    sender: str = ""
    #: A Messaging Service (``MG…``) that picks the sending number instead of (or besides) ``sender``.
    messaging_service_sid: str = ""
    #: The API's root (another region's edge, or a test stub).
    base_url: str = "https://api.twilio.com"
    #: How Twilio reaches Parley (``https://sms.example.com``): the status callback URL is built
    #: from it and webhook signatures are checked against it.
    public_url: str = ""
    #: Ask for delivery status callbacks (needs ``public_url``).
    status_callback: bool = True
    #: Per request (connecting: at most 5 s).
    timeout: Duration = Duration(10.0)


def signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    """Twilio's ``X-Twilio-Signature`` of a POST to ``url`` with form ``params``."""
    by_name: dict[str, list[str]] = defaultdict(list)
    for name, value in params:
        by_name[name].append(value)
    data = url + "".join(name + value for name in sorted(by_name) for value in sorted(by_name[name]))
    mac = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


def _error_detail(status: int, body: bytes) -> str:
    """``HTTP 400: Twilio error 21211: <message>`` from Twilio's JSON error, else the raw body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and data.get("code") is not None:
        return f"HTTP {status}: Twilio error {data['code']}: {data.get('message', '')}".rstrip(": ")
    return f"HTTP {status}: {body[:200].decode(errors='replace')}"


def _created_ms(value: object) -> int | None:
    """Twilio's ``date_created`` (RFC 2822, ``Tue, 01 Dec 2026 20:39:48 +0000``) in Unix ms."""
    if not isinstance(value, str):
        return None
    try:
        return int(email.utils.parsedate_to_datetime(value).timestamp() * 1000)
    except (TypeError, ValueError):
        return None


class TwilioGateway(HttpConnector):
    Config = TwilioConfig
    config: TwilioConfig
    can_reconcile = True

    @classmethod
    def check(cls, name: str, config: TwilioConfig) -> None:
        if not config.sender and not config.messaging_service_sid:
            raise ConfigError(
                f"gateways.{name}.sender", "set sender (our From number) or messaging_service_sid"
            )
        for key in ("base_url", "public_url"):
            url = getattr(config, key)
            if url and not url.startswith(("http://", "https://")):
                raise ConfigError(f"gateways.{name}.{key}", f"must be an http(s) URL, got {url!r}")

    def session_headers(self) -> dict[str, str]:
        # Basic auth as a header: aiohttp 3.14 deprecates BasicAuth (what session_auth returns).
        auth = aiohttp.encode_basic_auth(self.config.account_sid, self.config.auth_token)
        return {**self.default_headers, "Authorization": auth}

    @property
    def messages_url(self) -> str:
        sid = urllib.parse.quote(self.config.account_sid, safe="")
        return f"{self.config.base_url.rstrip('/')}/2010-04-01/Accounts/{sid}/Messages.json"

    @property
    def status_callback_url(self) -> str:
        if not (self.config.public_url and self.config.status_callback):
            return ""
        return f"{self.config.public_url.rstrip('/')}/v1/receipts/{self.name}"

    async def send(self, msg: OutboundMessage, timeout: float | None = None) -> SendResult:
        form = {"To": msg.to, "Body": msg.text}
        if msg.sender:
            form["From"] = msg.sender
        if self.config.messaging_service_sid:
            form["MessagingServiceSid"] = self.config.messaging_service_sid
        if self.status_callback_url:
            form["StatusCallback"] = self.status_callback_url
        answer = await self.call("POST", self.messages_url, data=form, timeout=timeout)
        try:
            sid = orjson.loads(answer.body).get("sid")
        except (orjson.JSONDecodeError, AttributeError):
            sid = None
        if not isinstance(sid, str) or not sid:
            raise GatewayRejected(
                self.name, f"HTTP {answer.status} without a message sid: {answer.body[:200]!r}",
                status=answer.status,
            )  # fmt: skip
        return SendResult(sid)

    async def find_sent(self, msg: OutboundMessage, since_ms: int, timeout: float | None = None) -> list[str]:
        """Twilio's sids of outbound messages to ``msg.to`` with its text, created since
        ``since_ms`` (see the module docstring), oldest first."""
        params = {"To": msg.to, "PageSize": "50"}
        if msg.sender and not self.config.messaging_service_sid:
            params["From"] = msg.sender
        url = f"{self.messages_url}?{urllib.parse.urlencode(params)}"
        found: list[str] = []
        for _ in range(LOOKUP_PAGES):
            answer = await self.call("GET", url, timeout=timeout)
            try:
                page = orjson.loads(answer.body)
            except orjson.JSONDecodeError:
                page = None
            messages = page.get("messages") if isinstance(page, dict) else None
            if not isinstance(page, dict) or not isinstance(messages, list):
                raise GatewayUnavailable(
                    self.name, f"cannot read Twilio's message list: {answer.body[:200]!r}", ambiguous=False
                )
            oldest: int | None = None
            for m in messages:
                created = _created_ms(m.get("date_created")) if isinstance(m, dict) else None
                if created is None:
                    continue
                oldest = created if oldest is None else min(oldest, created)
                if (
                    created >= since_ms and m.get("body") == msg.text
                    and str(m.get("direction", "outbound-api")).startswith("outbound")
                    and (not self.config.messaging_service_sid
                         or m.get("messaging_service_sid") == self.config.messaging_service_sid)
                    and isinstance(m.get("sid"), str)
                ):  # fmt: skip
                    found.append(m["sid"])
            following = page.get("next_page_uri")
            if not isinstance(following, str) or not following or (oldest is not None and oldest < since_ms):
                break
            url = self.config.base_url.rstrip("/") + following
        return found[::-1]

    def error_detail(self, status: int, body: bytes) -> str:
        """A rejection names Twilio's error code and message."""
        return _error_detail(status, body)

    # Webhooks -------------------------------------------------------------------------------

    @property
    def webhook_auth(self) -> bool:
        return True

    def authenticate(self, hook: Webhook, now: float) -> None:
        got = hook.headers.get(SIGNATURE_HEADER, "").strip()
        if not got:
            raise WebhookRejected(f"missing {SIGNATURE_HEADER} header (Twilio signs every webhook)")
        try:
            text = hook.body.decode()
        except UnicodeDecodeError:
            raise WebhookRejected("body is not UTF-8 form data, so it cannot be Twilio's") from None
        params = urllib.parse.parse_qsl(text, keep_blank_values=True) if hook.method == "POST" else []
        want = signature(self.config.auth_token, hook.url, params)
        if not hmac.compare_digest(want.encode(), got.encode()):
            raise WebhookRejected(
                f"{SIGNATURE_HEADER} does not match the request signed for {hook.url} with this "
                "gateway's auth_token (a different auth_token, a tampered body, or public_url not "
                "the URL Twilio calls)"
            )

    def parse_inbound(self, hook: Webhook) -> list[InboundText]:
        form = hook.form()
        for key in ("From", "To", "Body", "MessageSid"):
            if key not in form:
                raise Unprocessable(key, "required")
        if not form["MessageSid"].strip():
            raise Unprocessable("MessageSid", "must be the message's sid (not empty)")
        sid = form["MessageSid"]
        return [InboundText(sender=form["From"], to=form["To"], text=form["Body"], provider_id=sid)]

    def inbound_answer(self) -> WebhookAnswer:
        return WebhookAnswer(200, EMPTY_TWIML, "text/xml")

    def parse_receipts(self, hook: Webhook) -> list[Receipt]:
        form = hook.form()
        for key in ("MessageSid", "MessageStatus"):
            if not form.get(key, "").strip():
                raise Unprocessable(key, "required")
        status = form["MessageStatus"].strip().lower()
        if status in IN_BETWEEN:
            return []
        if status not in STATUS_MAP:
            known = ", ".join(sorted(STATUS_MAP.keys() | IN_BETWEEN))
            raise Unprocessable("MessageStatus", f"unknown status {form['MessageStatus']!r} (known: {known})")
        ours = STATUS_MAP[status]
        code = form.get("ErrorCode", "").strip()
        # Twilio's own status and error code stay on the record ("undelivered 30003").
        error = f"{status} {code}".strip() if code or ours not in ("delivered", "sent") else ""
        return [Receipt(provider_id=form["MessageSid"], status=ours, error=error)]

    def receipt_answer(self) -> WebhookAnswer | None:
        return None
