"""Jasmin SMS gateway's HTTP API (``jasmin.cfg`` ``[http-api]``, port 1401 by default).

Sending: ``POST {url}/send``, form-encoded ``username``, ``password``, ``to``, ``from`` (our
``sender``, when set) and the text: ``coding=0`` with ``content`` when it fits GSM 03.38 (Jasmin
converts it), else ``coding=8`` with ``hex-content``, the text in UTF-16-BE as hex (UCS-2 on the
wire). With ``dlr`` on and ``public_url`` set it asks for delivery reports: ``dlr=yes``,
``dlr-url={public_url}/v1/receipts/NAME``, ``dlr-level`` and ``dlr-method=POST``. Jasmin answers
200 ``Success "<message id>"``, or ``Error "<why>"`` with 400 (a parameter or a credential rule),
403 (authentication, charging, or "User throughput exceeded": that one is a rate signal, which
pauses the connector and is retried, not taken),
412 (no route or no connector), 500 (retried, maybe taken) or 503 (interceptor unavailable:
retried, not taken).

Webhooks: Jasmin POSTs forms and retries (``max_retries``, ``retry_delay``) until the answer is
200 with exactly ``ACK/Jasmin``, which both webhooks answer.

- Texts (SMS-MO) reach ``{public_url}/v1/inbound/NAME`` through a Jasmin HTTP client connector
  (``httpccm``) with ``method POST`` (its default is GET, which Parley does not take): ``id``,
  ``from``, ``to``, ``origin-connector``, ``coding``, ``content`` (the raw bytes) and ``binary``
  (the same bytes in hex). A UCS-2 text (data coding 8, or a general data coding whose alphabet
  bits say UCS-2) is read from ``binary`` as UTF-16-BE, ISO-8859-1 (coding 3) from ``binary``
  as Latin-1, anything else from ``content``; bytes that do not decode become U+FFFD, a text is
  never refused for its content.
- Delivery reports reach ``dlr-url`` with ``id`` (the id Jasmin answered), ``message_status``,
  ``level``, ``connector`` and, from the SMSC's receipt, ``id_smsc``, ``sub``, ``dlvrd``,
  ``subdate``, ``donedate``, ``err``, ``text``. Jasmin sends ``level=1`` with the submit_sm_resp
  status (``ESME_ROK`` → sent; any other ``ESME_R…`` → rejected) and ``level=2`` with the
  receipt's state (DELIVRD → delivered, ACCEPTD → sent, EXPIRED → expired, DELETED and UNDELIV →
  failed, REJECTD → rejected, UNKNOWN → nothing recorded). ``dlr_level: 3`` asks for both.

Jasmin's callers send no credentials of their own (neither the DLR nor the MO thrower sets an
Authorization header, and an ``httpccm`` URL cannot carry a user): with ``webhook_user`` set the
webhooks ask for HTTP basic auth, which a reverse proxy in front of Parley must add; without it,
the API's bearer key, likewise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.core.config import Duration
from engine.core.errors import ConfigError, GatewayRejected, GatewayThrottled, Unprocessable
from engine.core.sms import encoding_of
from gateways.base import InboundText, OutboundMessage, Receipt, SendResult, Webhook, WebhookAnswer
from gateways.http_common import HttpConnector, check_basic

ACK = WebhookAnswer(200, b"ACK/Jasmin", "text/plain")
SUCCESS_RE = re.compile(r'^\s*Success\s+"([^"]+)"\s*$')
#: A delivery receipt's state (SMPP v3.4 appendix B) -> ours; None: nothing to record.
RECEIPT_STATES: dict[str, str | None] = {
    "DELIVRD": "delivered", "ACCEPTD": "sent", "EXPIRED": "expired", "DELETED": "failed",
    "UNDELIV": "failed", "REJECTD": "rejected", "UNKNOWN": None,
}  # fmt: skip


@dataclass(frozen=True)
class JasminConfig:
    #: Jasmin's HTTP API root (``http://127.0.0.1:1401``); messages go to ``{url}/send``.
    url: str
    #: The Jasmin user Parley sends as (``jcli`` ``user``; needs the ``http_send`` authorization).
    username: str
    password: str
    #: Our address (``from``); empty: Jasmin's or the SMSC's default.
    sender: str = ""
    #: How Jasmin reaches Parley (``https://sms.example.com``): ``dlr-url`` is built from it.
    public_url: str = ""
    #: Ask for delivery reports (needs ``public_url``).
    dlr: bool = True
    #: 1: the SMSC took it (submit_sm_resp), 2: the handset's receipt, 3: both.
    dlr_level: int = 3
    #: Basic-auth credentials the webhooks ask for (added by a proxy: Jasmin sends none);
    #: neither set: the API's bearer key.
    webhook_user: str = ""
    webhook_password: str = ""
    #: Per request (connecting: at most 5 s).
    timeout: Duration = Duration(10.0)


def _is_ucs2(coding: str) -> bool:
    """Data coding 8, or a general data coding group (bits 7..6 = 00) with alphabet bits = UCS-2."""
    try:
        dcs = int(coding)
    except ValueError:
        return False
    return dcs & 0xC0 == 0 and dcs & 0x0C == 0x08


def _mo_text(form: dict[str, str]) -> str:
    coding = form.get("coding", "0").strip() or "0"
    raw: bytes | None = None
    if form.get("binary"):
        try:
            raw = bytes.fromhex(form["binary"].strip())
        except ValueError:
            raw = None
    if raw is not None and _is_ucs2(coding):
        return raw.decode("utf-16-be", errors="replace")
    if raw is not None and coding == "3":
        return raw.decode("latin-1")
    if "content" in form:
        return form["content"]
    if raw is not None:
        return raw.decode("utf-8", errors="replace")
    raise Unprocessable("content", "required (or binary)")


class JasminGateway(HttpConnector):
    Config = JasminConfig
    config: JasminConfig

    @classmethod
    def check(cls, name: str, config: JasminConfig) -> None:
        for key in ("url", "public_url"):
            url = getattr(config, key)
            if (url or key == "url") and not url.startswith(("http://", "https://")):
                raise ConfigError(f"gateways.{name}.{key}", f"must be an http(s) URL, got {url!r}")
        for key in ("username", "password"):
            if not getattr(config, key):
                raise ConfigError(f"gateways.{name}.{key}", "must not be empty")
        if config.dlr_level not in (1, 2, 3):
            raise ConfigError(
                f"gateways.{name}.dlr_level",
                f"must be 1 (SMSC), 2 (handset) or 3 (both), got {config.dlr_level}",
            )
        if bool(config.webhook_user) != bool(config.webhook_password):
            raise ConfigError(
                f"gateways.{name}.webhook_password", "set webhook_user and webhook_password together"
            )

    @property
    def dlr_url(self) -> str:
        if not (self.config.dlr and self.config.public_url):
            return ""
        return f"{self.config.public_url.rstrip('/')}/v1/receipts/{self.name}"

    async def send(self, msg: OutboundMessage, timeout: float | None = None) -> SendResult:
        form = {"username": self.config.username, "password": self.config.password, "to": msg.to}
        if msg.sender:
            form["from"] = msg.sender
        if encoding_of(msg.text).name == "UCS-2":
            form |= {"coding": "8", "hex-content": msg.text.encode("utf-16-be").hex()}
        else:
            form |= {"coding": "0", "content": msg.text}
        if self.dlr_url:
            form |= {
                "dlr": "yes", "dlr-url": self.dlr_url, "dlr-level": str(self.config.dlr_level),
                "dlr-method": "POST",
            }  # fmt: skip
        try:
            answer = await self.call(
                "POST", f"{self.config.url.rstrip('/')}/send", data=form, timeout=timeout
            )
        except GatewayRejected as exc:
            # Jasmin's error bodies are one short line (Error "..."), whole in call()'s message.
            detail = str(exc).removeprefix(f"gateway {self.name}: ")
            if exc.status == 403 and re.search(r"throughput|throttl", detail, re.IGNORECASE):
                raise GatewayThrottled(self.name, detail, status=403) from exc
            raise
        m = SUCCESS_RE.match(answer.body.decode(errors="replace"))
        if m is None:
            raise GatewayRejected(
                self.name, f'HTTP {answer.status} without Success "<id>": {answer.body[:200]!r}',
                status=answer.status,
            )  # fmt: skip
        return SendResult(m.group(1))

    # Webhooks -------------------------------------------------------------------------------

    @property
    def webhook_auth(self) -> bool:
        return bool(self.config.webhook_user)

    def authenticate(self, hook: Webhook, now: float) -> None:
        check_basic(hook, self.config.webhook_user, self.config.webhook_password)

    def parse_inbound(self, hook: Webhook) -> list[InboundText]:
        form = hook.form()
        for key in ("id", "from", "to"):
            if not form.get(key, "").strip():
                raise Unprocessable(key, "required")
        return [InboundText(sender=form["from"], to=form["to"], text=_mo_text(form), provider_id=form["id"])]

    def inbound_answer(self) -> WebhookAnswer:
        return ACK

    def parse_receipts(self, hook: Webhook) -> list[Receipt]:
        form = hook.form()
        for key in ("id", "message_status"):
            if not form.get(key, "").strip():
                raise Unprocessable(key, "required")
        state = form["message_status"].strip()
        ours: str | None
        if state.upper().startswith("ESME_"):
            ours = "sent" if state.upper() == "ESME_ROK" else "rejected"
        elif state.upper() in RECEIPT_STATES:
            ours = RECEIPT_STATES[state.upper()]
        else:
            known = ", ".join(["ESME_*", *RECEIPT_STATES])
            raise Unprocessable("message_status", f"unknown status {state!r} (known: {known})")
        if ours is None:
            return []
        err = form.get("err", "").strip()
        significant = err.strip("0") != ""
        error = f"{state} {err}".strip() if significant or ours not in ("delivered", "sent") else ""
        return [Receipt(provider_id=form["id"].strip(), status=ours, error=error)]

    def receipt_answer(self) -> WebhookAnswer:
        return ACK
