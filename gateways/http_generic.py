"""The generic JSON HTTP provider: any provider that takes a JSON POST per message.

Sending: ``POST url`` with the ``body`` template filled in (default ``{"id", "from", "to",
"text"}``), an ``Idempotency-Key`` header carrying our message id (a provider that dedupes on it
never sends twice), the configured ``authorization`` and ``headers``. A 2xx answer carries the
provider's id at ``id_path`` (dotted, list indexes allowed: ``messages.0.id``).

Webhooks: ``POST /v1/inbound/NAME`` takes ``{"from", "to", "text", "id"}``; ``POST
/v1/receipts/NAME`` takes ``{"id", "status", "error"}`` (or a list of them) with the provider's
status mapped through ``status_map``. With ``webhook_secret`` set, both must be signed:
``X-Parley-Timestamp`` (Unix seconds, within ``webhook_tolerance``) and ``X-Parley-Signature:
sha256=<hex HMAC-SHA256 of "{timestamp}." + body>``; with ``webhook_user`` basic auth is asked
for; with neither, the API's bearer key.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.core.config import Duration
from engine.core.errors import ConfigError, GatewayRejected, Unprocessable
from gateways.base import InboundText, OutboundMessage, Receipt, SendResult, Webhook
from gateways.http_common import HttpConnector, check_basic, check_signature

PLACEHOLDERS = frozenset({"id", "from", "to", "text", "segments"})
DEFAULT_BODY: dict[str, Any] = {"id": "$id", "from": "$from", "to": "$to", "text": "$text"}
#: Provider statuses most APIs use, mapped to ours (``status_map`` adds or overrides).
DEFAULT_STATUS_MAP = {
    "delivered": "delivered", "delivrd": "delivered",
    "failed": "failed", "undelivered": "failed", "undeliv": "failed", "deleted": "failed",
    "expired": "expired", "rejected": "rejected", "rejectd": "rejected",
    "sent": "sent", "accepted": "sent", "acceptd": "sent", "enroute": "sent",
}  # fmt: skip
OUR_STATUSES = frozenset({"sent", "delivered", "failed", "expired", "rejected"})


@dataclass(frozen=True)
class HttpGenericConfig:
    #: Where messages are POSTed.
    url: str
    #: Our address on this provider (short code, long number or alphanumeric sender id).
    sender: str = ""
    #: Sent as the Authorization header when set (``Bearer …`` or ``Basic …``).
    authorization: str = ""
    #: Extra request headers.
    headers: dict[str, str] = field(default_factory=dict)
    #: The JSON body; string values may use $id $from $to $text $segments (``$segments`` alone
    #: is sent as a number).
    body: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_BODY))
    #: Where the provider's message id is in its answer (dotted path).
    id_path: str = "id"
    timeout: Duration = Duration(10.0)
    #: Shared secret for signed webhooks (see the module docstring); "" = not signed.
    webhook_secret: str = ""
    #: How far a signed webhook's timestamp may be from now (older ones are replays).
    webhook_tolerance: Duration = Duration(300.0)
    #: Basic-auth credentials for the webhooks instead of a signature.
    webhook_user: str = ""
    webhook_password: str = ""
    #: Provider status (case-insensitive) -> ours, over the defaults.
    status_map: dict[str, str] = field(default_factory=dict)


def _template_strings(node: Any, path: str) -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _template_strings(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _template_strings(v, f"{path}[{i}]")]
    return [(path, node)] if isinstance(node, str) else []


def _fill(node: Any, values: dict[str, str], segments: int) -> Any:
    if isinstance(node, dict):
        return {k: _fill(v, values, segments) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, values, segments) for v in node]
    if isinstance(node, str):
        if node in ("$segments", "${segments}"):
            return segments
        return string.Template(node).substitute(values)
    return node


def _dig(data: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return None
    return data


class HttpGenericGateway(HttpConnector):
    Config = HttpGenericConfig
    config: HttpGenericConfig

    @classmethod
    def check(cls, name: str, config: HttpGenericConfig) -> None:
        usable = ", ".join(f"${p}" for p in sorted(PLACEHOLDERS))
        for path, text in _template_strings(config.body, f"gateways.{name}.body"):
            for m in string.Template.pattern.finditer(text):
                used = m.group("named") or m.group("braced")
                if m.group("invalid") is not None:
                    raise ConfigError(path, f"a lone $ in {text!r} (write $$ for a dollar; use {usable})")
                if used is not None and used not in PLACEHOLDERS:
                    raise ConfigError(path, f"unknown placeholder ${used} (use {usable})")
        for provider, ours in config.status_map.items():
            if ours not in OUR_STATUSES:
                allowed = ", ".join(sorted(OUR_STATUSES))
                raise ConfigError(f"gateways.{name}.status_map.{provider}", f"must be one of {allowed}")
        if bool(config.webhook_user) != bool(config.webhook_password):
            raise ConfigError(
                f"gateways.{name}.webhook_password", "set webhook_user and webhook_password together"
            )

    def session_headers(self) -> dict[str, str]:
        headers = {**self.default_headers, "Content-Type": "application/json", **self.config.headers}
        if self.config.authorization:
            headers["Authorization"] = self.config.authorization
        return headers

    async def send(self, msg: OutboundMessage, timeout: float | None = None) -> SendResult:
        values = {
            "id": msg.id, "from": msg.sender, "to": msg.to, "text": msg.text, "segments": str(msg.segments)
        }  # fmt: skip
        body = orjson.dumps(_fill(self.config.body, values, msg.segments))
        answer = await self.call(
            "POST", self.config.url, data=body, headers={"Idempotency-Key": msg.id}, timeout=timeout
        )
        try:
            pid = _dig(orjson.loads(answer.body), self.config.id_path)
        except orjson.JSONDecodeError:
            pid = None
        if pid is None or pid == "" or isinstance(pid, dict | list):
            where = self.config.id_path
            raise GatewayRejected(
                self.name,
                f"HTTP {answer.status} without a message id at {where!r}: {answer.body[:200]!r}",
                status=answer.status,
            )
        return SendResult(str(pid))

    # Webhooks -------------------------------------------------------------------------------

    @property
    def webhook_auth(self) -> bool:
        return bool(self.config.webhook_secret or self.config.webhook_user)

    def authenticate(self, hook: Webhook, now: float) -> None:
        if self.config.webhook_secret:
            check_signature(
                hook, self.config.webhook_secret, now, self.config.webhook_tolerance,
                ts_header="X-Parley-Timestamp", sig_header="X-Parley-Signature",
            )  # fmt: skip
        elif self.config.webhook_user:
            check_basic(hook, self.config.webhook_user, self.config.webhook_password)

    def parse_inbound(self, hook: Webhook) -> list[InboundText]:
        body = hook.json()
        items = body if isinstance(body, list) else [body]
        out = []
        for i, item in enumerate(items):
            where = f"[{i}]." if isinstance(body, list) else ""
            if not isinstance(item, dict):
                raise Unprocessable(f"{where}body".strip("."), "must be a JSON object")
            unknown = sorted(set(item) - {"from", "to", "text", "id"})
            if unknown:
                raise Unprocessable(f"{where}{unknown[0]}", "unknown field (allowed: from, id, text, to)")
            for key in ("from", "text", "id"):
                if key not in item:
                    raise Unprocessable(f"{where}{key}", "required")
            sender, text, pid, to = item["from"], item["text"], item["id"], item.get("to", "")
            if not isinstance(sender, str):
                raise Unprocessable(f"{where}from", "must be a phone number string")
            if not isinstance(text, str):
                raise Unprocessable(f"{where}text", "must be a string")
            if not isinstance(pid, str | int) or isinstance(pid, bool) or not str(pid).strip():
                raise Unprocessable(f"{where}id", "must be the provider's message id (a non-empty string)")
            if not isinstance(to, str):
                raise Unprocessable(f"{where}to", "must be a string (our number or short code)")
            out.append(InboundText(sender=sender, to=to, text=text, provider_id=str(pid)))
        return out

    def parse_receipts(self, hook: Webhook) -> list[Receipt]:
        body = hook.json()
        items = body if isinstance(body, list) else [body]
        mapping = DEFAULT_STATUS_MAP | {k.lower(): v for k, v in self.config.status_map.items()}
        out = []
        for i, item in enumerate(items):
            where = f"[{i}]." if isinstance(body, list) else ""
            if not isinstance(item, dict):
                raise Unprocessable(f"{where}body".strip("."), "must be a JSON object")
            pid, status = item.get("id"), item.get("status")
            if not isinstance(pid, str | int) or isinstance(pid, bool) or not str(pid).strip():
                raise Unprocessable(f"{where}id", "must be the provider's id of the message we sent")
            if not isinstance(status, str) or status.lower() not in mapping:
                known = ", ".join(sorted(mapping))
                raise Unprocessable(
                    f"{where}status", f"unknown status {status!r} (known: {known}; add it to status_map)"
                )
            ours = mapping[status.lower()]
            error = str(item.get("error") or "")
            if ours != "delivered" and status.lower() != ours:
                error = f"{status} {error}".strip()
            out.append(Receipt(provider_id=str(pid), status=ours, error=error))
        return out
