"""A simulated carrier behind the generic HTTP provider API, on loopback.

It plays both ends of the phone network: it accepts Parley's outbound messages (``POST /send``,
answering ``{"id": "sim-N"}``) into a per-number inbox, and it texts Parley as a customer would,
through Parley's inbound webhook. Tests make it misbehave:

- ``fail_next``: answer the next sends with these statuses (an int, or ``(status, headers)``
  such as ``(429, {"Retry-After": "7"})``); ``down``: answer every send with this status (an
  int or ``(status, headers)`` likewise);
- ``delay``: slow every answer down; ``hang``: never answer (the client times out);
- ``receipts``: call ``receipt_url`` back with a delivery report per accepted message
  (``"before"`` the send's answer, as fast providers sometimes do, or ``"after"``), signed with
  ``receipt_secret`` when set.

``answers`` keeps ``(time, status)`` per request as it was answered (0: never answered), the
time from ``now`` (``time.perf_counter`` unless a test hands it a fake clock's ``monotonic``).

It remembers each message's ``Idempotency-Key`` and answers a repeat with the same id without
delivering it again, as a provider that dedupes does.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from aiohttp import web

from gateways.simulators.loopback import LoopbackServer


@dataclass(frozen=True)
class Delivered:
    """A message that reached the simulated handset, with the time it arrived (perf_counter)."""

    id: str
    provider_id: str
    sender: str
    to: str
    text: str
    at: float


class SimulatedCarrier(LoopbackServer):
    """``async with SimulatedCarrier() as carrier: carrier.url`` — a provider on 127.0.0.1."""

    def __init__(self, *, delay: float = 0.0, name: str = "sim") -> None:
        super().__init__()
        self.name = name
        self.delay = delay
        self.fail_next: list[int | tuple[int, dict[str, str]]] = []
        self.down: int | tuple[int, dict[str, str]] = 0
        self.hang = False
        self.receipts: str = ""  # "", "before" or "after"
        self.receipt_url = ""
        self.receipt_secret = ""
        self.receipt_status = "delivered"
        self.received: list[Delivered] = []
        self.attempts = 0
        self.now: Callable[[], float] = time.perf_counter
        self.answers: list[tuple[float, int]] = []
        self.receipt_answers: list[int] = []
        self._seen: dict[str, str] = {}  # idempotency key -> provider id
        self._inboxes: dict[str, asyncio.Queue[Delivered]] = defaultdict(asyncio.Queue)
        self._ids = itertools.count(1)
        self._mo_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/send"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/send", self._send)

    async def __aexit__(self, *exc: object) -> None:
        for t in list(self._tasks):
            t.cancel()
        await super().__aexit__(*exc)

    async def _send(self, request: web.Request) -> web.Response:
        resp = await self._answer(request)
        self.answers.append((self.now(), resp.status))
        return resp

    async def _answer(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.hang:
            self.answers.append((self.now(), 0))
            await asyncio.sleep(3600)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_next:
            failure = self.fail_next.pop(0)
            status, headers = failure if isinstance(failure, tuple) else (failure, {})
            return web.Response(status=status, text="simulated failure", headers=headers)
        if self.down:
            status, headers = self.down if isinstance(self.down, tuple) else (self.down, {})
            return web.Response(status=status, text="simulated outage", headers=headers)
        body = orjson.loads(await request.read())
        key = request.headers.get("Idempotency-Key", "")
        if key and key in self._seen:
            return web.json_response({"id": self._seen[key]})
        msg = Delivered(
            id=body["id"], provider_id=f"{self.name}-{next(self._ids)}", sender=body.get("from", ""),
            to=body["to"], text=body["text"], at=self.now(),
        )  # fmt: skip
        if key:
            self._seen[key] = msg.provider_id
        self.received.append(msg)
        self._inboxes[msg.to].put_nowait(msg)
        if self.receipts == "before":
            await self._receipt(msg.provider_id)
        elif self.receipts == "after":
            task = asyncio.create_task(self._receipt(msg.provider_id, delay=0.01))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.json_response({"id": msg.provider_id})

    async def _receipt(self, provider_id: str, delay: float = 0.0) -> None:
        assert self._client is not None
        if delay:
            await asyncio.sleep(delay)
        body = orjson.dumps({"id": provider_id, "status": self.receipt_status})
        headers = {"Content-Type": "application/json"}
        if self.receipt_secret:
            ts = int(time.time())
            # Written from the documented scheme, not with Parley's own code (tests check both agree).
            mac = hmac.new(self.receipt_secret.encode(), b"%d." % ts + body, hashlib.sha256).hexdigest()
            headers |= {"X-Parley-Timestamp": str(ts), "X-Parley-Signature": f"sha256={mac}"}
        async with self._client.post(self.receipt_url, data=body, headers=headers) as resp:
            self.receipt_answers.append(resp.status)

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
