"""The generic JSON HTTP provider.

Each message is ``POST url`` with ``{"id", "from", "to", "text"}`` (``id`` is our idempotency key,
so a provider that dedupes on it never sends twice). A 2xx answer with ``{"id": provider_id}`` is
success; 408/429/5xx and connection failures are retryable; any other 4xx is a rejection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import orjson

from engine.config import Duration
from engine.errors import GatewayRejected, GatewayTimeout, GatewayUnavailable
from gateways.base import Gateway, OutboundMessage, SendResult

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class HttpGenericConfig:
    #: Where messages are POSTed.
    url: str
    #: Our address on this provider (short code, long number or alphanumeric sender id).
    sender: str = ""
    #: Sent as the Authorization header when set (``Bearer …`` or ``Basic …``).
    authorization: str = ""
    timeout: Duration = Duration(10.0)
    #: Messages in flight to this provider at once.
    concurrency: int = 16


class HttpGenericGateway(Gateway):
    Config = HttpGenericConfig
    config: HttpGenericConfig

    def __init__(self, name: str, config: HttpGenericConfig) -> None:
        super().__init__(name, config)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpGenericGateway:
        headers = {"Content-Type": "application/json", "User-Agent": "parley"}
        if self.config.authorization:
            headers["Authorization"] = self.config.authorization
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            connector=aiohttp.TCPConnector(limit=self.config.concurrency),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, msg: OutboundMessage) -> SendResult:
        assert self._session is not None, "gateway used outside its async with"
        body = orjson.dumps({"id": msg.id, "from": msg.sender, "to": msg.to, "text": msg.text})
        try:
            async with self._session.post(self.config.url, data=body) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError as exc:
            raise GatewayTimeout(self.name, f"no answer within {self.config.timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise GatewayUnavailable(self.name, f"{type(exc).__name__}: {exc}") from exc
        except asyncio.CancelledError:
            raise
        if status in RETRYABLE_STATUS:
            raise GatewayUnavailable(self.name, f"HTTP {status}", status=status)
        if not 200 <= status < 300:
            raise GatewayRejected(self.name, f"HTTP {status}: {raw[:200]!r}", status=status)
        try:
            pid = orjson.loads(raw)["id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise GatewayRejected(
                self.name, f"HTTP {status} without a JSON id: {raw[:200]!r}", status=status
            ) from None
        return SendResult(str(pid))
