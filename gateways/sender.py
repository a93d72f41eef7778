"""The send pipeline: one sender per connector per process, draining the outbound lanes of the
shards this process holds a SENDER lease on, out to the provider.

    p:out:T:GW (reply lanes  --+                                   +--> provider (HTTP, SMPP)
      of the held shards)      +--> per-contact order --> circuit --> rate slot --> concurrency
    p:out:T:GW:bulk -----------+    (one message at a time            (replies      (in flight at
      (read ahead a little)          per contact)                     first)         once)

Which shards' lanes a process reads is decided by leases (``engine.core.leases``, role
``sender:GW`` per connector, the same machinery the workers use): :class:`SenderLeases` holds a
connector's set in one process, so a shard's lanes of a connector are read by one process at a
time, and any number of processes (on any hosts) split the shards between them. A connector
that cannot send from a process (an SMPP connector holding no bind lease there) holds none of
its shard leases there (the ``gate``). A contact belongs to one shard, so its messages are in one process's
hands. Leases are renewed every third of ``engine.lease_ttl`` and at once when another sender
process joins or leaves. A shard newly held has its lanes' pending entries claimed first
(XAUTOCLAIM: a previous holder read them and stopped) and read back as after a crash. A process
holding more than its share stops reading the surplus, lets the sends in the provider's hands
finish and be recorded (the others stay pending), and only then releases the shards. A sender
*fences itself*: it hands nothing to the provider once its leases may have run out.

Guarantees:
- at-least-once towards the provider: an entry is acknowledged only when its final status is
  recorded (status.lua, with the status), so a crash mid-send leaves it pending and it is sent
  again, by this process after a restart or by whichever process takes the shard over, with
  the same message id (our idempotency key, passed to providers that take one); a connector
  whose provider takes no key but can be asked (``can_reconcile``: Twilio) is asked first
  whether it already has such a message, and if so it is recorded as sent with the provider's
  id instead of being sent again (also after a timeout or a 500);
- replies first: the reply lanes are read as they come; the bulk lanes only ``bulk_prefetch``
  ahead (across all held shards), and the rate's slots go to waiting replies before bulk (a
  later reply to a contact whose bulk message is still waiting lifts that message to the reply
  lane's priority, keeping their order);
- per-contact order within the connector: a message waits for the previous one to its contact
  (its shard's lanes are read by this process alone);
- retryable failures (timeouts, 5xx, refused connections) are retried with exponential
  back-off and jitter, or after the provider's ``Retry-After``, up to ``max_attempts``; a
  rejection fails the message at once; a message older than ``max_age`` expires;
- a rate signal (429, SMPP throttling) pauses the whole connector for the time the provider
  asked and is neither a failure nor an attempt (``max_age`` still bounds the message);
- the connector's rate is one rate for every process (``rate.lua``, one key);
- the circuit breaker stops sending to a provider that keeps failing and probes it (the probe
  with ``probe_timeout``); while it is open a failed message waits for the probes instead of
  its own back-off, and a back-off ends when a probe gets through; while it is
  open, messages whose route names another connector move there (``move.lua``, atomically:
  from one lane to the same lane of the same shard, one slot), unless an attempt here may have
  reached the provider (a timeout, a 500, a connection dropped mid-request, or a send
  interrupted by a crash): those stay and are retried here with the same id, so no message goes
  out through two connectors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from engine.core import keys
from engine.core.consumer import BLOCK_MS, Entry, StreamConsumer, claim_pending, ensure_group
from engine.core.errors import GatewayError, GatewayThrottled, GatewayUnavailable
from engine.core.leases import ShardLeases, Tick
from engine.core.numbers import mask
from engine.core.sendopts import SendOptions
from gateways import recent_errors
from gateways.base import Gateway, Host, OutboundMessage, SendResult
from gateways.circuit import Circuit
from gateways.rate import Pacer, Ticket
from gateways.receipts import record_send
from gateways.scripts.claim import ClaimArgs, parse_verdict
from gateways.scripts.move import MoveArgs

log = logging.getLogger(__name__)

#: How much earlier than our queue time a provider's record of a message may say it was created
#: (the two clocks disagree) and still be looked at when reconciling.
RECONCILE_SKEW_MS = 60_000
#: How often a fenced message looks again whether the leases are back.
FENCE_POLL_S = 0.05


class _Fenced(Exception):
    """The leases may have run out (or the shard was given up) just before a send."""


@dataclass(eq=False)
class Job:
    """One outbound message in this process's hands."""

    stream: str
    shard: int
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
    #: In the provider's hands right now, or its outcome being recorded (a graceful stop, or a
    #: shard given up, waits for these only).
    sending: bool = False
    #: Its shard is no longer this process's: no further attempt (it stays pending for the next holder).
    dropped: bool = False
    error: str = ""
    attempts: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: A cancellable message's hand-over key (its lane entry's ``u``), "" for the rest: checked
    #: (claim.lua) right before its first hand-over to the gateway; ``handed`` once it won.
    handover: str = ""
    handed: bool = False


class SenderLeases:
    """The sender leases of one process (``async with``), shared by its senders: which shards'
    lanes this process reads. Renews, applies changes to every sender registered, releases a
    surplus once its sends are done (see the module docstring)."""

    def __init__(
        self, rt: Host, me: str | None = None, role: str = "sender", gate: Callable[[], bool] | None = None
    ) -> None:
        """``role``: whose leases (``sender:GW``: connector GW's lanes). ``gate``: while it says
        False (an SMPP connector holding no bind here) the process holds none of these leases, so
        the processes that can send read the lanes."""
        cfg = rt.config.engine
        self.rt = rt
        self.role = role
        self.gate = gate
        #: Unique per process run (and per set): a restarted process never takes a dead run's lease.
        self.me = me or f"{socket.gethostname()}-{os.getpid()}-s-{secrets.token_hex(3)}"
        self.leases = ShardLeases(rt.store, self.me, cfg.shards, cfg.lease_ttl, role=role)
        #: The shards the senders read now.
        self.held: frozenset[int] = frozenset()
        self.senders: list[Sender] = []
        self._margin = cfg.lease_ttl / 4
        self._releasing: set[int] = set()
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._renew_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._entered = 0

    def valid(self) -> bool:
        """True while the leases cannot have run out yet (with a quarter of their time to spare)."""
        return self.leases.valid(self._margin)

    async def __aenter__(self) -> SenderLeases:
        self._entered += 1
        if self._entered > 1:
            return self
        try:
            await self._apply(await self.leases.tick())
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
            log.warning("senders %s: cannot take shard leases yet (%s); retrying", self.me, exc)
        self._tasks = [
            asyncio.create_task(self._keep(), name="parley-sender-leases"),
            asyncio.create_task(self._watch(), name="parley-sender-lease-changes"),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._entered -= 1
        if self._entered > 0:
            return
        self._stop.set()
        self._renew_now.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        try:
            await self.leases.leave()  # the other sender processes take the shards over at once
        except (aioredis.RedisError, OSError) as exc:
            log.warning("senders %s: could not release their leases (%s); they expire", self.me, exc)
        self.held = frozenset()

    async def register(self, sender: Sender) -> None:
        """A sender starts: it reads the shards held now (and those taken later)."""
        async with self._lock:
            self.senders.append(sender)
            await sender.sync(self.held)

    def unregister(self, sender: Sender) -> None:
        with contextlib.suppress(ValueError):
            self.senders.remove(sender)

    async def _apply(self, tick: Tick) -> None:
        """Bring every sender to what the renewal found: read what is held, stop reading what
        is lost or surplus, release the surplus once its sends are done."""
        async with self._lock:
            extra = len(tick.held) - tick.share
            # The highest-numbered surplus, so repeated (or late) renewals pick the same shards.
            surplus = set(sorted(tick.held, reverse=True)[:extra]) if extra > 0 else set()
            target = frozenset(tick.held - surplus - self._releasing)
            busy: list[asyncio.Task[None]] = []
            for sender in self.senders:
                busy += await sender.sync(target)
            if target != self.held:
                log.info("senders %s: reading the lanes of shards %s", self.me, sorted(target))
            self.held = target
            free = surplus - self._releasing
            if free:
                self._releasing |= free
                self._tasks = [t for t in self._tasks if not t.done()]
                self._tasks.append(
                    asyncio.create_task(self._release(free, busy), name="parley-sender-release")
                )

    async def _finish(self, busy: list[asyncio.Task[None]]) -> None:
        """Let the sends in the provider's hands be recorded (``shutdown_timeout`` at most); those
        still running then are cancelled, as if this process had died there (the next holder
        of their shard sends them again, with the same id)."""
        if not busy:
            return
        _, late = await asyncio.wait(busy, timeout=self.rt.config.engine.shutdown_timeout)
        for t in late:
            t.cancel()
        if late:
            await asyncio.wait(late)

    async def _release(self, shards: set[int], busy: list[asyncio.Task[None]]) -> None:
        """Give ``shards`` up once the sends in hand for them are done (the rest stay pending)."""
        try:
            await self._finish(busy)
            await self.leases.release(shards)
            log.info("senders %s: handed over shards %s", self.me, sorted(shards))
        except (aioredis.RedisError, OSError) as exc:
            log.warning("senders %s: could not hand over shards %s (%s)", self.me, sorted(shards), exc)
        finally:
            self._releasing -= shards

    async def _keep(self) -> None:
        """Renew every third of the lease time, and at once when told the shares changed."""
        period = self.leases.ttl_ms / 3000
        was_valid = True
        while not self._stop.is_set():
            self._renew_now.clear()  # before the renewal: news during it renews again
            try:
                if self.gate is not None and not self.gate():
                    await self._step_aside()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._renew_now.wait(), min(period, 0.2))
                    continue
                await self._apply(await self.leases.tick())
                was_valid = True
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                if was_valid:
                    log.warning("senders %s: cannot renew shard leases (%s)", self.me, exc)
                was_valid = False
            except Exception:
                log.exception("senders %s: unexpected error renewing leases; continuing", self.me)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._renew_now.wait(), period)

    async def _step_aside(self) -> None:
        """The connector cannot send from here (no bind): hand every shard over, at once."""
        if not (self.held or self.leases.valid()):
            return
        async with self._lock:
            busy: list[asyncio.Task[None]] = []
            for sender in self.senders:
                busy += await sender.sync(frozenset())  # stop reading; sends in hand finish
            self.held = frozenset()
            await self._finish(busy)
            await self.leases.leave()
        log.info("senders %s: %s cannot send from this process; its lanes left to others", self.me, self.role)

    async def _watch(self) -> None:
        """Renew at once when another sender process joins, leaves or gives shards up
        (ShardLeases.watch)."""
        await self.leases.watch(self._renew_now, self._stop)


class _Lane(StreamConsumer):
    """Reads one lane (reply or bulk) of every shard the sender reads."""

    def __init__(self, sender: Sender, lane: str) -> None:
        super().__init__(sender.rt.store.redis, keys.OUTBOUND_GROUP, sender.consumer_name, [])
        self.label = f"sender {sender.gw.name} {lane}"
        self.sender = sender
        self.lane = lane
        self.stop_timeout = sender.rt.config.engine.shutdown_timeout
        self._version = -1

    async def room(self) -> int:
        # Nothing is read while the connector cannot send from this process (an SMPP connector
        # holding no bind lease here): other processes, holding the binds, take those messages.
        while not self._stopping.is_set() and not await self.sender.gw.wait_sendable(0.5):
            pass
        n = await self.sender.room(self.lane)
        while not self.sender.owned and not self._stopping.is_set():  # no shard held (yet): wait
            self.sender.changed.clear()
            waits = [asyncio.ensure_future(e.wait()) for e in (self.sender.changed, self._stopping)]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        if self._version != self.sender.version:  # between reads: the shards read changed
            self._version = self.sender.version
            self.streams = [
                keys.outbound_stream(s, self.sender.gw.name, self.lane) for s in sorted(self.sender.owned)
            ]
            self._recover = True  # what was claimed is read (in stream order) before anything new
        return n

    def reading_stale(self, version: int) -> bool:
        """Whether a read is in flight over the shards of a version before ``version``."""
        return self._idle and self._version < version

    async def handle(self, entries: list[Entry], recovering: bool) -> bool:
        for stream, entry_id, fields in entries:
            self.sender.take(self.lane, stream, entry_id, fields, recovering)
        return False


class Sender:
    """Owns the send loop of one connector (``async with Sender(rt, gateway, leases)``; without
    ``leases`` it holds a lease set of its own)."""

    def __init__(self, rt: Host, gateway: Gateway, leases: SenderLeases | None = None) -> None:
        self.rt = rt
        self.gw = gateway
        self.policy = gateway.policy
        self._own_leases = leases is None
        self.leases = leases if leases is not None else SenderLeases(rt)
        self.consumer_name = self.leases.me
        #: The shards whose lanes this sender reads now, and a counter of their changes.
        self.owned: frozenset[int] = frozenset()
        self.version = 0
        self._lanes: list[_Lane] = []
        #: Set when ``owned`` changes.
        self.changed = asyncio.Event()
        self._shard_of = {
            keys.outbound_stream(s, gateway.name, lane): s
            for s in range(rt.config.engine.shards)
            for lane in keys.LANES
        }
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
        self._readers = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Sender:
        await self._stack.enter_async_context(self.pacer)
        if self._own_leases:
            await self._stack.enter_async_context(self.leases)
        await self.leases.register(self)
        self._stack.callback(self.leases.unregister, self)
        for lane in keys.LANES:
            self._lanes.append(await self._readers.enter_async_context(_Lane(self, lane)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._readers.aclose()  # the readers stop reading
        try:
            await self._stop_jobs()
        finally:
            await self._stack.aclose()  # then (the sends recorded) the leases go, then the pacer stops

    async def _stop_jobs(self) -> None:
        jobs = self._jobs["reply"] | self._jobs["bulk"]
        # Messages not yet handed over stay pending in Redis and go after a restart (or from the
        # process that takes the shard); a send in progress is given shutdown_timeout to finish
        # and record its outcome.
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

    # Shards ---------------------------------------------------------------------------------

    async def sync(self, target: frozenset[int]) -> list[asyncio.Task[None]]:
        """Read the lanes of ``target``: claim the pending entries of shards newly read, stop
        reading the others (their messages not in the provider's hands are let go: they stay
        pending). Returns the tasks still sending for the shards let go."""
        busy: list[asyncio.Task[None]] = []
        gone = self.owned - target
        if gone:
            self.owned -= gone
            for reader in self._lanes:  # (cluster) no read of them outstanding once released
                await reader.stop_reading([keys.outbound_stream(s, self.gw.name, reader.lane) for s in gone])
            self.version += 1
            # (one Redis) The lane readers block in a read of every shard they had (up to
            # BLOCK_MS): wait until none still reads a shard let go, so that nothing of it is
            # delivered here after the next holder claimed its pending entries (they would stay
            # pending here, unread by anyone). What such a read delivers before is claimed.
            deadline = asyncio.get_running_loop().time() + 4 * BLOCK_MS / 1000
            while any(r.reading_stale(self.version) for r in self._lanes):
                if asyncio.get_running_loop().time() > deadline:
                    log.warning(
                        "sender %s: a lane read did not end in time; handing over anyway", self.gw.name
                    )
                    break
                await asyncio.sleep(0.005)
            for jobs in self._jobs.values():
                for t, job in jobs.items():
                    if job.shard in gone:
                        job.dropped = True
                        if job.sending:
                            busy.append(t)
                        else:
                            t.cancel()
        added = set()
        for shard in sorted(target - self.owned):
            try:
                await self._claim(shard)
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                log.warning("sender %s: cannot claim shard %d yet (%s)", self.gw.name, shard, exc)
                continue  # read once claimed: at the next renewal
            added.add(shard)
        self.owned |= added
        if added:
            self.version += 1
        if gone or added:
            self.changed.set()
        return busy

    async def _claim(self, shard: int) -> None:
        """Take over the entries a previous reader of ``shard``'s lanes read but never recorded.
        Safe without an idle time: this process holds the shard's lease, so that reader stopped."""
        r = self.rt.store.redis
        claimed = 0
        for lane in keys.LANES:
            stream = keys.outbound_stream(shard, self.gw.name, lane)
            await ensure_group(r, stream, keys.OUTBOUND_GROUP)
            claimed += await claim_pending(r, stream, keys.OUTBOUND_GROUP, self.consumer_name)
        if claimed:
            log.info("sender %s: claimed %d unrecorded messages of shard %d", self.gw.name, claimed, shard)

    # Taking entries -------------------------------------------------------------------------

    def take(
        self, lane: str, stream: str, entry_id: bytes, fields: dict[bytes, bytes], recovering: bool
    ) -> None:
        if (stream, entry_id) in self._busy:  # a re-read of pending entries returns those in hand too
            return
        shard = self._shard_of.get(stream)
        if shard is None or shard not in self.owned:  # read just as the shard was let go
            return
        text = fields[b"t"].decode()
        cost = self.gw.segments(text)
        paced = self.gw.paces_parts and self.policy.rate > 0  # a slot per part, booked as it goes
        route = fields.get(b"r", b"").decode()
        queued = fields.get(b"q")
        options = SendOptions.decode(fields.get(b"o"))
        job = Job(
            stream=stream, shard=shard, entry_id=entry_id, lane=lane,
            msg=OutboundMessage(
                id=fields[b"m"].decode(), to=fields[b"c"].decode(), text=text,
                sender=options.sender or self.gw.sender,
                segments=cost, pace=self.pacer.next_part if paced else None, options=options,
            ),
            route=[g for g in route.split(",") if g],
            queued_ms=int(queued) if queued else int(entry_id.split(b"-")[0]),
            # Read back after a restart: it may have been on its way to the provider.
            pinned=recovering,
            ticket=Ticket(cost=1 if paced else cost, urgent=lane == "reply"),
            unsure=recovering,
            handover=fields[b"u"].decode() if b"u" in fields else "",
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

    async def _leased(self, job: Job) -> bool:
        """Wait while the leases may have run out; False once the job's shard is no longer ours."""
        while not job.dropped:
            if self.leases.valid():
                return True
            await asyncio.sleep(FENCE_POLL_S)
        return False

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
            if not await self._leased(job):
                return "dropped"  # the shard went to another process: it stays pending there
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
            if job.handover and not job.handed:
                # A cancellable message: taken now (claim.lua), or left to the cancel that came
                # first. Before the rate slot, so nothing comes between a slot and its send.
                try:
                    verdict = await self._take_over(job)
                except (aioredis.RedisError, OSError) as exc:
                    if probe:
                        self.circuit.abandon_probe()
                    log.warning("sender %s: cannot take %s over (%s); trying again", gw.name, job.msg.id, exc)
                    await self.circuit.rest(self._backoff(1, None))
                    continue
                if verdict != "ok":
                    if probe:
                        self.circuit.abandon_probe()
                    return await self._finish(job, verdict, "", f"{verdict} before it was sent")
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
                    if job.dropped or not self.leases.valid():
                        raise _Fenced  # fenced: nothing reaches the provider without a lease
                    job.sending = True
                    try:
                        if job.unsure and gw.can_reconcile:
                            taken = await self._reconcile(job, timeout)
                        result = taken or await gw.send(job.msg, timeout=timeout)
                    finally:
                        job.sending = False
            except _Fenced:
                if probe:
                    self.circuit.abandon_probe()
                continue
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
                kind = "retry" if exc.retryable else "rejected"
                await recent_errors.note(self.rt.store, gw.name, clock.now_ms(), kind, job.msg.id, job.error)
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
                crash = repr(exc)
                await recent_errors.note(self.rt.store, gw.name, clock.now_ms(), "crash", job.msg.id, crash)
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
            records = await self.rt.store.redis.hgetall(keys.message_records(job.msg.to, job.shard))
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

    async def _take_over(self, job: Job) -> str:
        """Take a cancellable message for sending (claim.lua, one coalesced call in its shard's
        slot): the cancel's other side, so a message cancelled first is never handed over.
        ``ok`` (it is this sender's now), ``cancelled`` or ``expired``; raises on a Redis failure
        (nothing was taken)."""
        call = ClaimArgs(job.handover, self.rt.clock.now_ms())

        async def add(pipe: Pipeline) -> None:
            await self.rt.store.run("claim", keys=call.to_keys(), args=call.to_argv(), client=pipe)

        (raw,) = await self.rt.store.coalescer.run(add)
        verdict = parse_verdict(raw)
        job.handed = verdict == "ok"
        return verdict

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        base = min(self.policy.backoff * 2 ** (attempts - 1), self.policy.backoff_max)
        return float(base * random.uniform(0.5, 1.0))

    # Outcomes -------------------------------------------------------------------------------

    async def _finish(self, job: Job, status: str, pid: str, error: str) -> str:
        """Store the outcome and acknowledge the entry (gateways/receipts.py: the provider-id map
        first, then the record); retried until Redis takes it."""
        job.sending = True  # being recorded: a stop or a hand-over waits for it
        self.rt.metrics.finished(self.gw.name, status)
        msg = job.msg

        def record() -> Awaitable[None]:
            return record_send(
                self.rt, self.gw.name, msg.id, msg.to, status, pid, error,
                stream=job.stream, entry_id=job.entry_id, record_gateway=bool(pid),
            )  # fmt: skip

        await self._persist(record, msg.id)
        return status

    async def _move(self, job: Job) -> str:
        """Fail over to the next connector of the route (atomically: out of this lane into the
        same lane of the same shard of the next connector, one slot)."""
        job.sending = True
        target, rest = job.route[0], job.route[1:]
        self.rt.metrics.finished(self.gw.name, "rerouted")
        why = job.error or f"circuit open at {self.gw.name}"
        to_stream = keys.outbound_stream(job.shard, target, job.lane)
        call = MoveArgs(
            from_stream=job.stream, to_stream=to_stream, entry_id=job.entry_id, message_id=job.msg.id,
            contact=job.msg.to, shard=job.shard, text=job.msg.text, target=target, rest=tuple(rest),
            queued_ms=job.queued_ms, now_ms=self.rt.clock.now_ms(), why=why, handover=job.handover,
            options=job.msg.options.encode(),
        )  # fmt: skip

        async def move() -> None:
            await ensure_group(self.rt.store.redis, to_stream, keys.OUTBOUND_GROUP)

            async def add(pipe: Pipeline) -> None:
                await self.rt.store.run("move", keys=call.to_keys(), args=call.to_argv(), client=pipe)

            await self.rt.store.coalescer.run(add)

        await self._persist(move, job.msg.id)
        log.info("msg=%s failed over %s -> %s (%s)", job.msg.id, self.gw.name, target, why)
        return "rerouted"

    async def _persist(self, step: Callable[[], Awaitable[None]], msg_id: str) -> None:
        for delay in (0.1, 0.5, 1, 2, 5, 5, 5):
            try:
                await step()
                return
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                log.warning("sender %s: cannot record %s (%s)", self.gw.name, msg_id, exc)
                await asyncio.sleep(delay)
        log.error("sender %s: outcome of %s not recorded; it stays pending, retried", self.gw.name, msg_id)
