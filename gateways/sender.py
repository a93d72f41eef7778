"""The send pipeline: one sender per connector, draining its two lanes out to the provider.

    p:out:GW (reply lane) --+                                  +--> provider (HTTP, SMPP)
                            +--> per-contact order --> circuit --> rate slot --> concurrency
    p:out:GW:bulk ----------+    (one message at a time             (replies     (in flight at
      (read ahead a little)       per contact)                      first)        once)

Guarantees:
- at-least-once towards the provider: an entry is acknowledged only when its final status is
  recorded (one script with the status), so a crash mid-send leaves it pending and it is sent
  again on restart with the same message id (our idempotency key, passed to providers that
  take one); a connector whose provider takes no key but can be asked (``can_reconcile``:
  Twilio) is asked first whether it already has such a message, and if so it is recorded as
  sent with the provider's id instead of being sent again (also after a timeout or a 500);
- replies first: the reply lane is read as it comes; the bulk lane only ``bulk_prefetch`` ahead,
  and the rate's slots go to waiting replies before bulk (a later reply to a contact whose bulk
  message is still waiting lifts that message to the reply lane's priority, keeping their order);
- per-contact order within the connector: a message waits for the previous one to its contact;
- retryable failures (timeouts, 5xx, refused connections) are retried with exponential
  back-off and jitter, or after the provider's ``Retry-After``, up to ``max_attempts``; a
  rejection fails the message at once; a message older than ``max_age`` expires;
- a rate signal (429, SMPP throttling) pauses the whole connector for the time the provider
  asked and is neither a failure nor an attempt (``max_age`` still bounds the message);
- the circuit breaker stops sending to a provider that keeps failing and probes it (the probe
  with ``probe_timeout``); while it is open a failed message waits for the probes instead of
  its own back-off, and a back-off ends when a probe gets through; while it is
  open, messages whose route names another connector move there (``move.lua``, atomically:
  in one lane at a time), unless an attempt here may have reached the provider (a timeout, a
  500, a connection dropped mid-request, or a send interrupted by a crash): those stay and are
  retried here with the same id, so no message goes out through two connectors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from engine.core import keys
from engine.core.consumer import Entry, StreamConsumer, ensure_group
from engine.core.errors import GatewayError, GatewayThrottled, GatewayUnavailable
from engine.core.numbers import mask
from gateways.base import Gateway, Host, OutboundMessage, SendResult
from gateways.circuit import Circuit
from gateways.rate import Pacer, Ticket
from gateways.receipts import status_call
from gateways.scripts.move import MoveArgs

log = logging.getLogger(__name__)

#: How much earlier than our queue time a provider's record of a message may say it was created
#: (the two clocks disagree) and still be looked at when reconciling.
RECONCILE_SKEW_MS = 60_000


@dataclass(eq=False)
class Job:
    """One outbound message in this process's hands."""

    stream: str
    entry_id: bytes
    lane: str
    msg: OutboundMessage
    route: list[str]  # connectors to fail over to, in order
    queued_ms: int
    #: An attempt here may have reached the provider: never fail this one over.
    pinned: bool
    ticket: Ticket
    #: The provider may have it right now (read back after a crash, or an ambiguous failure):
    #: a connector that can reconcile is asked before it is sent again.
    unsure: bool = False
    waiting_rate: bool = False
    #: In the provider's hands right now (a graceful stop waits for these only).
    sending: bool = False
    error: str = ""
    attempts: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class _Lane(StreamConsumer):
    """Reads one lane's stream for the sender."""

    def __init__(self, sender: Sender, lane: str) -> None:
        stream = keys.outbound_stream(sender.gw.name, lane)
        super().__init__(sender.rt.store.redis, keys.OUTBOUND_GROUP, sender.consumer_name, [stream])
        self.label = f"sender {sender.gw.name} {lane}"
        self.sender = sender
        self.lane = lane
        self.stop_timeout = sender.rt.config.engine.shutdown_timeout

    async def room(self) -> int:
        # Nothing is read while the connector cannot send from this process (an SMPP connector
        # holding no bind lease here): other processes, holding the binds, take those messages.
        while not self._stopping.is_set():
            if await self.sender.gw.wait_sendable(0.5):
                return await self.sender.room(self.lane)
        return 0

    async def handle(self, entries: list[Entry], recovering: bool) -> bool:
        for stream, entry_id, fields in entries:
            self.sender.take(self.lane, stream, entry_id, fields, recovering)
        return False


class Sender:
    """Owns the send loop of one connector (``async with Sender(rt, gateway)``)."""

    def __init__(self, rt: Host, gateway: Gateway) -> None:
        self.rt = rt
        self.gw = gateway
        self.policy = gateway.policy
        self.consumer_name = f"{socket.gethostname()}-s"
        self.stream = keys.outbound_stream(gateway.name)
        self.pacer = Pacer(rt.store, gateway.name, self.policy.rate)
        self.circuit = Circuit(
            gateway.name, self.policy.circuit_failures, self.policy.circuit_cooldown,
            self.policy.circuit_cooldown_max, rt.clock, rt.metrics,
            throttle_backoff=self.policy.backoff, throttle_backoff_max=self.policy.backoff_max,
        )  # fmt: skip
        self.reply_limit = max(64, self.policy.concurrency * 4)
        self._jobs: dict[str, dict[asyncio.Task[None], Job]] = {"reply": {}, "bulk": {}}
        self._busy: set[tuple[str, bytes]] = set()  # entries in hand (still pending until recorded)
        self._tails: dict[str, Job] = {}
        self._slots = asyncio.Semaphore(gateway.concurrency)
        self._room = {"reply": asyncio.Event(), "bulk": asyncio.Event()}
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Sender:
        await self._stack.enter_async_context(self.pacer)
        for lane in keys.LANES:
            await self._stack.enter_async_context(_Lane(self, lane))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()  # readers stop reading, then the pacer stops
        jobs = self._jobs["reply"] | self._jobs["bulk"]
        # Messages not yet handed over stay pending in Redis and go after a restart; a send in
        # progress is given shutdown_timeout to finish and record its outcome.
        waiting = [t for t, job in jobs.items() if not job.sending]
        for t in waiting:
            t.cancel()
        sending = [t for t in jobs if t not in waiting]
        late: set[asyncio.Task[None]] = set()
        if sending:
            _, late = await asyncio.wait(sending, timeout=self.rt.config.engine.shutdown_timeout)
            for t in late:
                t.cancel()
        if waiting or late:
            await asyncio.wait([*waiting, *late])

    @property
    def in_hand(self) -> int:
        return len(self._jobs["reply"]) + len(self._jobs["bulk"])

    async def room(self, lane: str) -> int:
        limit = self.reply_limit if lane == "reply" else self.policy.bulk_prefetch
        while len(self._jobs[lane]) >= limit:
            self._room[lane].clear()
            await self._room[lane].wait()
        return limit - len(self._jobs[lane])

    # Taking entries -------------------------------------------------------------------------

    def take(
        self, lane: str, stream: str, entry_id: bytes, fields: dict[bytes, bytes], recovering: bool
    ) -> None:
        if (stream, entry_id) in self._busy:  # a re-read of pending entries returns those in hand too
            return
        text = fields[b"t"].decode()
        cost = self.gw.segments(text)
        paced = self.gw.paces_parts and self.policy.rate > 0  # a slot per part, booked as it goes
        route = fields.get(b"r", b"").decode()
        queued = fields.get(b"q")
        job = Job(
            stream=stream, entry_id=entry_id, lane=lane,
            msg=OutboundMessage(
                id=fields[b"m"].decode(), to=fields[b"c"].decode(), text=text, sender=self.gw.sender,
                segments=cost, pace=self.pacer.next_part if paced else None,
            ),
            route=[g for g in route.split(",") if g],
            queued_ms=int(queued) if queued else int(entry_id.split(b"-")[0]),
            # Read back after a restart: it may have been on its way to the provider.
            pinned=recovering,
            ticket=Ticket(cost=1 if paced else cost, urgent=lane == "reply"),
            unsure=recovering,
        )  # fmt: skip
        previous = self._tails.get(job.msg.to)
        if previous is not None and lane == "reply" and previous.waiting_rate:
            self.pacer.promote(previous.ticket)
        self._tails[job.msg.to] = job
        task = asyncio.create_task(self._run(job, previous))
        self._jobs[lane][task] = job
        self._busy.add((stream, entry_id))

        def finished(t: asyncio.Task[None]) -> None:
            self._jobs[lane].pop(t, None)
            self._busy.discard((stream, entry_id))
            self._room[lane].set()
            if self._tails.get(job.msg.to) is job:
                del self._tails[job.msg.to]

        task.add_done_callback(finished)

    # One message ----------------------------------------------------------------------------

    async def _run(self, job: Job, previous: Job | None) -> None:
        try:
            if previous is not None:
                await previous.done.wait()
            if previous is not None and previous.ticket.urgent:
                job.ticket.urgent = True  # keep a promoted contact's messages together
            await self._deliver(job)
        finally:
            job.done.set()

    def _expired(self, job: Job) -> bool:
        return self.rt.clock.now_ms() - job.queued_ms > self.policy.max_age * 1000

    async def _deliver(self, job: Job) -> str:
        clock, gw, m = self.rt.clock, self.gw, self.rt.metrics
        while True:
            if self._expired(job):
                why = job.error or f"not sent within max_age {self.policy.max_age:g}s"
                return await self._finish(job, "expired", "", why)
            if self.circuit.is_open and job.route and not job.pinned:
                return await self._move(job)
            probe = await self.circuit.admit()
            if self._expired(job):
                if probe:
                    self.circuit.abandon_probe()
                continue
            if self.circuit.is_open and not probe and job.route and not job.pinned:
                return await self._move(job)
            job.waiting_rate = True
            await self.pacer.acquire(job.ticket)
            job.waiting_rate = False
            t0 = clock.monotonic()
            waited = max(0.0, (clock.now_ms() - job.queued_ms) / 1000)
            m.dispatched(gw.name, job.lane, waited, job.msg.segments)
            timeout = self.policy.probe_timeout if probe else None  # a hanging provider costs seconds
            taken: SendResult | None = None
            try:
                async with self._slots:
                    await self.pacer.recheck(job.ticket)  # a slot missed while waiting here is not used late
                    job.sending = True
                    try:
                        if job.unsure and gw.can_reconcile:
                            taken = await self._reconcile(job, timeout)
                        result = taken or await gw.send(job.msg, timeout=timeout)
                    finally:
                        job.sending = False
            except GatewayThrottled as exc:
                # A rate signal from a live provider: the connector pauses (admit waits for it);
                # not a failure, not an attempt; max_age bounds how long a message keeps trying.
                job.error = str(exc)
                job.pinned = job.pinned or exc.ambiguous  # SMPP: some parts already taken
                m.sent(gw.name, "throttled")
                self.circuit.throttled(probe, exc.retry_after)
                continue
            except GatewayError as exc:
                job.error = str(exc)
                if not exc.retryable:
                    self.circuit.success(probe)  # the provider answered: it is up
                    m.sent(gw.name, "failed")
                    log.warning("send rejected msg=%s to=%s: %s", job.msg.id, mask(job.msg.to), exc)
                    return await self._finish(job, "failed", "", job.error)
                m.sent(gw.name, "retry")
                job.attempts += 1
                job.pinned = job.pinned or exc.ambiguous
                job.unsure = job.unsure or exc.ambiguous
                self.circuit.failure(probe, exc.retry_after)
                if job.attempts >= self.policy.max_attempts:
                    if job.route and not job.pinned:
                        return await self._move(job)
                    log.warning("send failed msg=%s to=%s after %d attempts: %s",
                                job.msg.id, mask(job.msg.to), job.attempts, exc)  # fmt: skip
                    return await self._finish(job, "failed", "", job.error)
                if self.circuit.is_open:
                    if job.route and not job.pinned:
                        return await self._move(job)
                    continue  # the breaker's probes say when it goes next, not its own back-off
                await self.circuit.rest(self._backoff(job.attempts, exc.retry_after))
                continue
            except Exception as exc:  # a connector bug: fail this message, never the loop
                log.exception("gateway %s crashed sending %s", gw.name, job.msg.id)
                if probe:
                    self.circuit.abandon_probe()
                return await self._finish(job, "failed", "", f"gateway {gw.name}: internal error {exc!r}")
            self.circuit.success(probe)
            if taken is not None:
                m.sent(gw.name, "reconciled")
                log.info("msg=%s to=%s: %s already has it as %s; not sent again",
                         job.msg.id, mask(job.msg.to), gw.name, taken.provider_id)  # fmt: skip
            else:
                m.sent(gw.name, "sent", clock.monotonic() - t0)
            return await self._finish(job, "sent", result.provider_id, "")

    async def _reconcile(self, job: Job, timeout: float | None) -> SendResult | None:
        """Ask the provider whether it already took ``job`` (it takes no idempotency key, and we
        may have died, or lost the answer, after it did). Its id when it has it: the message is
        recorded as sent, not sent again; None: not there, send it.

        The provider matches by recipient, text and time, so a message it took that another of
        the contact's messages already owns (the same text sent earlier) is not this one. A
        message it takes after the lookup (a request still in its hands) is not seen: that
        window, about a request's time, is what remains of at-least-once here."""
        since = job.queued_ms - RECONCILE_SKEW_MS
        candidates = await self.gw.find_sent(job.msg, since, timeout=timeout)
        job.unsure = False
        if not candidates:
            return None
        try:
            records = await self.rt.store.redis.hgetall(keys.message_records(job.msg.to))
        except (aioredis.RedisError, OSError) as exc:
            job.unsure = True
            raise GatewayUnavailable(
                self.gw.name, f"cannot check {len(candidates)} possible earlier send(s): Redis: {exc}",
                ambiguous=False,
            ) from exc  # fmt: skip
        owned = set()
        for message_id, raw in records.items():
            try:
                rec = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            name = message_id.decode() if isinstance(message_id, bytes) else message_id
            if name != job.msg.id and isinstance(rec, dict) and rec.get("provider_id"):
                owned.add(str(rec["provider_id"]))
        mine = [pid for pid in candidates if pid not in owned]
        return SendResult(mine[0]) if mine else None

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        base = min(self.policy.backoff * 2 ** (attempts - 1), self.policy.backoff_max)
        return float(base * random.uniform(0.5, 1.0))

    # Outcomes -------------------------------------------------------------------------------

    async def _finish(self, job: Job, status: str, pid: str, error: str) -> str:
        """Store the outcome and acknowledge the entry; retried until Redis takes it."""
        self.rt.metrics.finished(self.gw.name, status)
        msg = job.msg
        call = status_call(
            self.rt, self.gw.name, msg.id, msg.to, status, pid, error,
            stream=job.stream, entry_id=job.entry_id, record_gateway=bool(pid),
        )  # fmt: skip

        async def add(pipe: Pipeline) -> None:
            await self.rt.store.run("status", keys=call.to_keys(), args=call.to_argv(), client=pipe)

        await self._persist(add, msg.id)
        return status

    async def _move(self, job: Job) -> str:
        """Fail over to the next connector of the route (atomically: out of this lane, into its)."""
        target, rest = job.route[0], job.route[1:]
        self.rt.metrics.finished(self.gw.name, "rerouted")
        why = job.error or f"circuit open at {self.gw.name}"
        await ensure_group(self.rt.store.redis, keys.outbound_stream(target, job.lane), keys.OUTBOUND_GROUP)
        call = MoveArgs(
            from_stream=job.stream, to_stream=keys.outbound_stream(target, job.lane), entry_id=job.entry_id,
            message_id=job.msg.id, contact=job.msg.to, text=job.msg.text, target=target, rest=tuple(rest),
            queued_ms=job.queued_ms, now_ms=self.rt.clock.now_ms(), why=why,
        )  # fmt: skip

        async def add(pipe: Pipeline) -> None:
            await self.rt.store.run("move", keys=call.to_keys(), args=call.to_argv(), client=pipe)

        await self._persist(add, job.msg.id)
        log.info("msg=%s failed over %s -> %s (%s)", job.msg.id, self.gw.name, target, why)
        return "rerouted"

    async def _persist(self, add: Callable[[Pipeline], Awaitable[None]], msg_id: str) -> None:
        for delay in (0.1, 0.5, 1, 2, 5, 5, 5):
            try:
                await self.rt.store.coalescer.run(add)
                return
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                log.warning("sender %s: cannot record %s (%s)", self.gw.name, msg_id, exc)
                await asyncio.sleep(delay)
        log.error("sender %s: outcome of %s not recorded; it stays pending, retried", self.gw.name, msg_id)
