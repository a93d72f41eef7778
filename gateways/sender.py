"""The send pipeline (first cut): one sender per gateway, draining that gateway's outbound stream.

Guarantees:
- at-least-once towards the provider: an entry is acknowledged only after its final status is
  recorded, so a crash mid-send leaves it pending and it is sent again on restart, with the same
  message id (our idempotency key) for providers that dedupe on it;
- per-contact order: a message waits for the previous message to the same contact;
- retryable failures (timeouts, 429, 5xx, refused connections) are retried with exponential
  back-off up to ``MAX_ATTEMPTS``; a rejection fails the message at once. The status history
  of each message is kept in its record.

The send-pipeline issue replaces this with lanes, rate control, routing and a circuit breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from engine import keys
from engine.consumer import Entry, StreamConsumer
from engine.errors import GatewayError
from engine.numbers import mask
from gateways.base import Gateway, OutboundMessage

if TYPE_CHECKING:
    from engine.runtime import Runtime

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 4
BACKOFF_S = (0.25, 1.0, 4.0)
PROVIDER_ID_TTL_S = 7 * 86400


class Sender(StreamConsumer):
    """Owns the send loop of one gateway."""

    label = "sender"

    def __init__(self, rt: Runtime, gateway: Gateway) -> None:
        self.stream = keys.outbound_stream(gateway.name)
        super().__init__(rt.store.redis, keys.OUTBOUND_GROUP, f"{socket.gethostname()}-s", [self.stream])
        self.label = f"sender {gateway.name}"
        self.rt = rt
        self.gw = gateway
        self.stop_timeout = rt.config.engine.shutdown_timeout
        self.limit = gateway.concurrency * 4
        self._inflight: set[asyncio.Task[None]] = set()
        self._busy: set[bytes] = set()  # entry ids being sent (still pending until recorded)
        self._tails: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(gateway.concurrency)

    async def __aexit__(self, *exc: object) -> None:
        await super().__aexit__(*exc)
        pending = set(self._inflight)
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.rt.config.engine.shutdown_timeout)
            for t in late:  # still pending in Redis: sent again after restart
                t.cancel()
            if late:
                await asyncio.wait(late)

    async def room(self) -> int:
        while len(self._inflight) >= self.limit:
            await asyncio.wait(set(self._inflight), return_when=asyncio.FIRST_COMPLETED)
        return self.limit - len(self._inflight)

    async def handle(self, entries: list[Entry], recovering: bool) -> bool:
        for _, entry_id, fields in entries:
            if entry_id not in self._busy:  # a re-read of pending entries returns those in flight too
                self._spawn(entry_id, fields)
        return False

    def _spawn(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        contact = fields[b"c"].decode()
        msg = OutboundMessage(
            id=fields[b"m"].decode(), to=contact, text=fields[b"t"].decode(), sender=self.gw.sender
        )
        previous = self._tails.get(contact)
        task = asyncio.create_task(self._deliver(entry_id, msg, previous))
        self._tails[contact] = task
        self._inflight.add(task)
        self._busy.add(entry_id)

        def finished(t: asyncio.Task[None]) -> None:
            self._inflight.discard(t)
            self._busy.discard(entry_id)
            if self._tails.get(contact) is t:
                del self._tails[contact]

        task.add_done_callback(finished)

    async def _deliver(
        self, entry_id: bytes, msg: OutboundMessage, previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(previous)
        status, pid, error = "failed", "", ""
        for attempt in range(MAX_ATTEMPTS):
            t0 = self.rt.clock.monotonic()
            try:
                async with self._slots:
                    result = await self.gw.send(msg)
            except GatewayError as exc:
                self.rt.metrics.sent(self.gw.name, "retry" if exc.retryable else "failed")
                error = str(exc)
                if not exc.retryable or attempt == MAX_ATTEMPTS - 1:
                    log.warning("send failed msg=%s to=%s: %s", msg.id, mask(msg.to), exc)
                    break
                await self.rt.clock.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
                continue
            self.rt.metrics.sent(self.gw.name, "sent", self.rt.clock.monotonic() - t0)
            status, pid, error = "sent", result.provider_id, ""
            break
        await self._record(entry_id, msg, status, pid, error)

    async def _record(self, entry_id: bytes, msg: OutboundMessage, status: str, pid: str, error: str) -> None:
        """Store the outcome and acknowledge the entry; retried until Redis takes it."""
        # KEYS[2] is only written when there is a provider id; a placeholder keeps KEYS[3] in place.
        pid_key = keys.provider_id(self.gw.name, pid) if pid else keys.provider_id(self.gw.name, "-")
        status_keys = [keys.message_records(msg.to), pid_key, self.stream]
        for delay in (0.1, 0.5, 1, 2, 5, 5, 5):
            try:

                async def add(pipe: Pipeline) -> None:
                    await self.rt.store.run(
                        "status",
                        keys=status_keys,
                        args=[
                            msg.id, status, self.rt.clock.now_ms(), pid, error, msg.to, PROVIDER_ID_TTL_S,
                            keys.OUTBOUND_GROUP, entry_id,
                        ],
                        client=pipe,
                    )  # fmt: skip

                # Coalesced with the other sends that finished in the same pass: one round trip.
                await self.rt.store.coalescer.run(add)
                return
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                log.warning("sender %s: cannot record status of %s (%s)", self.gw.name, msg.id, exc)
                await asyncio.sleep(delay)
        log.error(
            "sender %s: status of %s not recorded; it stays pending and is resent",
            self.gw.name,
            msg.id,
        )
