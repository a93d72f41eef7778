"""What every HTTP connector shares: its client (gateways/http_client.py), error translation,
webhook checks.

``HttpConnector.call`` sends one request and turns every way it can fail into the pipeline's
vocabulary (:mod:`engine.core.errors`):

- the connection could not be made (refused, DNS, connect timeout): retryable, *not* taken;
- 429: a rate signal (``GatewayThrottled``: the connector pauses, the breaker does not count it),
  not taken, with its ``Retry-After`` (seconds or an HTTP date);
- 503: retryable, not taken; ``Retry-After`` is passed on;
- 408, 500, 502, 504, a read timeout, a connection dropped mid-request: retryable but
  *ambiguous* (the provider may have the message), so never failed over to another connector;
- any other 4xx: a rejection, the message fails at once;
- a 2xx whose body the connector cannot read: a rejection that names the body.
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass
from typing import Any

from engine.core.errors import (
    GatewayRejected,
    GatewayThrottled,
    GatewayTimeout,
    GatewayUnavailable,
    WebhookRejected,
)
from engine.core.http import retry_after, sign
from gateways.base import Gateway, SendPolicy, Webhook
from gateways.http_client import ConnectFailed, Disconnected, HttpClient

NOT_TAKEN_STATUS = frozenset({429, 503})
THROTTLED_STATUS = 429
AMBIGUOUS_STATUS = frozenset({408, 425, 500, 502, 504})


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: bytes
    headers: dict[str, str]


class HttpConnector(Gateway):
    """A connector that talks HTTP to its provider through one owned keep-alive client."""

    #: Sent with every request (the subclass adds its auth).
    default_headers: dict[str, str] = {"User-Agent": "parley"}

    def __init__(self, name: str, config: Any, policy: SendPolicy | None = None) -> None:
        super().__init__(name, config, policy)
        self._session: HttpClient | None = None

    @property
    def timeout(self) -> float:
        return self.send_timeout(self.config)

    @classmethod
    def send_timeout(cls, config: Any) -> float:
        return float(getattr(config, "timeout", 10.0))

    def session_headers(self) -> dict[str, str]:
        return dict(self.default_headers)

    async def __aenter__(self) -> HttpConnector:
        timeout = self.timeout
        self._session = HttpClient(
            self.session_headers(), limit=self.policy.concurrency, timeout=timeout,
            connect_timeout=min(timeout, 5.0),
        )  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, url: str, *, timeout: float | None = None, **kwargs: Any) -> HttpAnswer:
        """One request; a 2xx comes back, every failure is raised as a GatewayError.
        ``timeout``: this request's own (a circuit probe's), else the connector's."""
        assert self._session is not None, "gateway used outside its async with"
        limit = self.timeout if timeout is None else timeout
        try:
            resp = await self._session.request(method, url, timeout=timeout, **kwargs)
        except ConnectFailed as exc:
            raise GatewayUnavailable(self.name, str(exc), ambiguous=False) from exc
        except TimeoutError as exc:
            raise GatewayTimeout(self.name, f"no answer within {limit:g}s") from exc
        except (Disconnected, OSError) as exc:
            # Disconnected or broken mid-request: the provider may have taken it.
            raise GatewayUnavailable(self.name, f"{type(exc).__name__}: {exc}", ambiguous=True) from exc
        status, raw, headers = resp.status, resp.body, resp.headers
        if 200 <= status < 300:
            return HttpAnswer(status, raw, headers)
        detail = self.error_detail(status, raw)
        wait = retry_after(headers.get("retry-after"))
        if status == THROTTLED_STATUS:
            raise GatewayThrottled(self.name, detail, status=status, retry_after=wait)
        if status in NOT_TAKEN_STATUS:
            raise GatewayUnavailable(self.name, detail, status=status, retry_after=wait, ambiguous=False)
        if status in AMBIGUOUS_STATUS or status >= 500:
            raise GatewayUnavailable(self.name, detail, status=status, retry_after=wait, ambiguous=True)
        raise GatewayRejected(self.name, detail, status=status)

    def error_detail(self, status: int, body: bytes) -> str:
        """What a failed answer says, for the message's ``error`` (a connector may read its
        provider's error format instead)."""
        return f"HTTP {status}: {body[:200].decode(errors='replace')}"


# Webhook authentication --------------------------------------------------------------------


def check_signature(
    hook: Webhook, secret: str, now: float, tolerance: float, *, ts_header: str, sig_header: str
) -> None:
    """Timestamped HMAC check: a missing, stale (replayed) or wrong signature raises 401."""
    ts = hook.headers.get(ts_header, "")
    sig = hook.headers.get(sig_header, "")
    if not ts or not sig:
        raise WebhookRejected(f"missing {ts_header} or {sig_header} header")
    try:
        stamp = int(ts)
    except ValueError:
        raise WebhookRejected(f"{ts_header} is not Unix seconds: {ts[:40]!r}") from None
    if abs(now - stamp) > tolerance:
        raise WebhookRejected(
            f"{ts_header} is {now - stamp:+.0f}s from now (allowed ±{tolerance:g}s): replayed or clock skew"
        )
    want = sign(secret, stamp, hook.body)
    if not any(hmac.compare_digest(want, s.strip()) for s in sig.split(",")):
        raise WebhookRejected(f"{sig_header} does not match the body")


def check_basic(hook: Webhook, user: str, password: str) -> None:
    """HTTP basic auth against the connector's webhook credentials."""
    header = hook.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic" or not token:
        raise WebhookRejected("send the connector's webhook credentials as HTTP basic auth")
    try:
        got_user, _, got_pw = base64.b64decode(token, validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        raise WebhookRejected("malformed basic auth header") from None
    ok_user = hmac.compare_digest(got_user.encode(), user.encode())
    ok_pw = hmac.compare_digest(got_pw.encode(), password.encode())
    if not (ok_user and ok_pw):
        raise WebhookRejected("wrong webhook user or password")
