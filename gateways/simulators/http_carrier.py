"""A simulated carrier behind the generic HTTP provider API, on loopback.

It plays both ends of the phone network: it accepts Parley's outbound messages (``POST /send``,
answering ``{"id": "sim-N"}``) into a per-number inbox, and it texts Parley as a customer would,
through Parley's inbound webhook. Tests make it misbehave: ``fail_next`` answers the next N
sends with an HTTP status, ``delay`` slows every answer down.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web


@dataclass(frozen=True)
class Delivered:
    """A message that reached the simulated handset, with the time it arrived (perf_counter)."""

    id: str
    provider_id: str
    sender: str
    to: str
    text: str
    at: float


class SimulatedCarrier:
    """``async with SimulatedCarrier() as carrier: carrier.url`` — a provider on 127.0.0.1."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.delay = delay
        self.fail_next: list[int] = []
        self.received: list[Delivered] = []
        self.attempts = 0
        self._inboxes: dict[str, asyncio.Queue[Delivered]] = defaultdict(asyncio.Queue)
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._mo_ids = itertools.count(1)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/send"

    async def __aenter__(self) -> SimulatedCarrier:
        app = web.Application()
        app.router.add_post("/send", self._send)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        self._client = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _send(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_next:
            return web.Response(status=self.fail_next.pop(0), text="simulated failure")
        body = orjson.loads(await request.read())
        msg = Delivered(
            id=body["id"], provider_id=f"sim-{next(self._ids)}", sender=body.get("from", ""),
            to=body["to"], text=body["text"], at=time.perf_counter(),
        )  # fmt: skip
        self.received.append(msg)
        self._inboxes[msg.to].put_nowait(msg)
        return web.json_response({"id": msg.provider_id})

    async def next_message(self, to: str, timeout: float = 5.0) -> Delivered:
        """The next message delivered to handset ``to`` (waits up to ``timeout`` seconds)."""
        return await asyncio.wait_for(self._inboxes[to].get(), timeout)

    async def text_in(
        self, webhook_url: str, api_key: str, sender: str, text: str, *, to: str = "12345"
    ) -> float:
        """Deliver a customer's text to Parley's inbound webhook; returns when it was sent."""
        assert self._client is not None
        sent_at = time.perf_counter()
        body = {"from": sender, "to": to, "text": text, "id": f"mo-{next(self._mo_ids)}"}
        async with self._client.post(
            webhook_url, json=body, headers={"Authorization": f"Bearer {api_key}"}
        ) as resp:
            if resp.status != 202:
                raise RuntimeError(f"inbound webhook answered {resp.status}: {await resp.text()}")
        return sent_at
