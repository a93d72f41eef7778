"""A connector's rate: slots handed out in priority order, booked in Redis for every process.

Carriers sell throughput and count what arrives in any one-second window, so the pacing aims at
both: the mean on the wire within 1% of ``rate``, and no one-second window, however aligned,
holding more than ``rate`` segments.

- Every process sending through a connector books its slots in the same Redis key
  (``rate.lua``): evenly paced, never in the past, and never more than ``rate`` segments in any
  window of one second plus ``JITTER_S``. The pace is 1.008 s / ``rate``: 99.2% of the rate,
  the 0.8% being the jitter allowance below. Time lost to a late send (up to ``CATCH_UP_S``) is
  made up by sending closer together, never past the ceiling; idle time earns no burst.
- The slot is a time on Redis's clock. Each process maps it onto its own monotonic clock (the
  smallest observed difference between a reply's arrival and Redis's time in it, so a slow
  reply does not shift the slot) and waits for exactly that moment, no earlier.
- A send may reach the wire late (the event loop was busy, a concurrency slot was taken): a
  send checks its slot just before it is handed over (:meth:`Pacer.recheck`). Found within
  ``LATE_S`` of it, it goes and its slot stands (the rest of ``JITTER_S`` covers the way to the
  socket). Found later, it goes all the same, and its booking is *restamped*: ``rate.lua`` moves
  its record to the moment of that check, on Redis's clock (never later than the send really
  left). Going late does not overfill the second ending at it (that second reaches back no
  further than the window its booking checked, and every booking after it counted it); what
  lateness breaks is the view of a booking made about a second later, which would count it at
  its slot while it left after, and so put a segment too many in the second ending at itself.
  The restamp lands before any such booking can be made (bookings are at most ``MAX_AHEAD_S``
  ahead), provided it reaches Redis within about 0.95 s of the slot (``rate.lua`` says when
  one did not: ``overdue``, logged). A send found more than ``STALE_S`` late (a stall, not a
  busy loop) gives its slot back and books a fresh one, first in line, once, so what a stall
  held up is spread over fresh slots rather than sent in a bunch; found late again, it goes and
  is restamped. A message waits for at most one fresh slot. Earlier versions gave every late
  slot back, and a loop always more than ``LATE_S`` late (a busy machine) then never sent.
- A message of N segments sent as one request (HTTP) is one event on the wire: it is spaced by
  its N segments and waits until they fit in the window behind it (``rate.lua``), so a long text
  after a run of short ones cannot overfill a second either. A connector that sends the parts
  one by one (SMPP, ``Gateway.paces_parts``) books a slot per part instead (:meth:`next_part`):
  a part sent a round trip after the one before is then never a late one.

Within a process, waiting messages are served replies first, then bulk, each in arrival order: a
bulk backlog never stands between a customer and their answer for more than one slot. A process
books a slot for each message waiting (up to ``BATCH``) in one call, none more than
``MAX_AHEAD_S`` before it is due; each slot, when due, goes to the first message in line that
fits in it (a reply that arrived since the booking takes the next slot). One call per slot
capped a process at one send per Redis round trip: a few hundred a second on a busy loop,
whatever the connector's rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from engine.core.store import Store
from gateways.scripts import install
from gateways.scripts.rate import RateArgs, RateReply

log = logging.getLogger(__name__)

#: A slot is only booked when it is due within this long (then the process waits for it).
MAX_AHEAD_S = 0.05
#: How much later than its slot a send may reach the wire: slots keep one second plus this free
#: of ``rate`` segments, so the spacing is (1 + JITTER_S) / rate (99.2% of the rate).
JITTER_S = 0.008
#: How late a slot may be found (by the pacer waking, by the sender about to send) and still be
#: used; the rest of JITTER_S covers the way from that check to the socket.
LATE_S = 0.003
#: A send found later than this after its slot (a stall, not a busy loop) gives it back and books
#: a fresh one, once per send, rather than going in a bunch with what the stall held up.
STALE_S = 0.02
#: How far behind its pace the connector may be and catch up (a late wake-up's lost time is made
#: up by sending closer together, within the window's ceiling); further behind, it was idle or
#: stalled long, and the pace restarts from now (idle time earns no burst).
CATCH_UP_S = 0.02
#: How fast this process's idea of Redis's clock may drift upwards (NTP slews, seconds per second).
CLOCK_CREEP = 50e-6
#: The most slots booked in one call (those waiting, up to this, within ``MAX_AHEAD_S``).
BATCH = 64


@dataclass(eq=False)
class Ticket:
    """One message waiting for its slot. ``urgent`` tickets (the reply lane) go first."""

    cost: int
    urgent: bool
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    #: When its slot is, on this process's monotonic clock (set when granted).
    due: float = 0.0
    #: Its reservation in ``rate.lua``'s log: given back if the slot went stale, restamped if
    #: the send went late ("" once restamped).
    booking: str = ""
    #: This send already gave back a stale slot (it goes on the next, however late).
    rebooked: bool = False
    #: The segments its slot was booked for (``cost``, or more: a slot booked for a longer
    #: message waiting behind it); what its booking counts, so what a restamp moves.
    booked: int = 0


class RedisClock:
    """Redis's clock (the slots' clock) on this process's ``time.monotonic()``.

    A reply carrying Redis's time ``t`` arrives at least as late as ``t`` happened, so the least
    (arrival - t) seen is the offset, to within the fastest reply's latency; it may creep upwards
    by ``CLOCK_CREEP`` so a drifting clock is followed. A slot mapped with it is never early."""

    def __init__(self) -> None:
        self._offset: float | None = None
        self._at = 0.0

    def sample(self, redis_us: int, arrived: float) -> None:
        seen = arrived - redis_us / 1_000_000
        if self._offset is None:
            self._offset = seen
        else:
            self._offset = min(seen, self._offset + (arrived - self._at) * CLOCK_CREEP)
        self._at = arrived

    def local(self, redis_us: int) -> float:
        assert self._offset is not None, "no sample yet"
        return redis_us / 1_000_000 + self._offset

    def redis_us(self, local: float) -> int:
        """A moment of ``time.monotonic()`` on Redis's clock: never later than it really was."""
        assert self._offset is not None, "no sample yet"
        return math.floor((local - self._offset) * 1_000_000)


def slot_args(rate: float) -> tuple[str, int, int]:
    """``rate.lua``'s spacing (us per segment, a decimal), window (us) and segments per window."""
    window_us = round((1 + JITTER_S) * 1_000_000)
    return f"{window_us / rate:.3f}", window_us, max(1, math.floor(rate))


class Pacer:
    """``async with Pacer(...)``; ``await pacer.acquire(ticket)`` returns when the message may go."""

    def __init__(self, store: Store, gateway: str, rate: float) -> None:
        self.store = store
        install(store, ("rate",))  # a pacer used alone (a benchmark, a test) brings its script
        self.gateway = gateway
        self.rate = rate
        if rate > 0:
            self._spacing, self._window_us, self._cap = slot_args(rate)
        self._queues: dict[bool, deque[Ticket]] = {True: deque(), False: deque()}
        #: Tickets whose slot passed before they could use it: first in line for the next one.
        self._retake: deque[Ticket] = deque()
        self.clock = RedisClock()
        #: Slots given back because the send found them stale (more than STALE_S late).
        self.rebooked = 0
        #: Sends that went more than LATE_S late, their booking moved to when they went.
        self.restamped = 0
        #: Restamps that failed or came too late to be sure of the ceiling (logged).
        self.overdue = 0
        #: Calls to rate.lua that booked slots (one books a slot for each ticket waiting).
        self.bookings = 0
        #: Booked slots a stall of the event loop passed before they were handed out (unused).
        self.passed = 0
        self._restamps: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def __aenter__(self) -> Pacer:
        if self.rate > 0:
            self._task = asyncio.create_task(self._run(), name=f"parley-pacer-{self.gateway}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        if self._restamps:  # late sends already on the wire: record them before going
            await asyncio.wait(set(self._restamps), timeout=1.0)
        if self._task is not None:
            # A cancel that lands inside a Redis call can come back as a connection error (the
            # client drops the connection); the loop checks _closing, so it ends either way.
            self._task.cancel()
            self._wake.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def waiting(self) -> int:
        return len(self._retake) + len(self._queues[True]) + len(self._queues[False])

    async def acquire(self, ticket: Ticket) -> None:
        if self.rate <= 0:
            return
        ticket.booking = ""  # a new send (a retry): the last booking was used, not missed
        ticket.rebooked = False
        await self._wait(ticket, self._queues[ticket.urgent])

    async def recheck(self, ticket: Ticket) -> None:
        """Just before the message goes, with nothing left between it and the socket. Its slot
        passed more than ``STALE_S`` ago (the first time for this send): give it back and wait
        for a fresh one, first in line. Then, more than ``LATE_S`` after its slot (it waited for
        a concurrency slot, the loop was busy): it goes now, and its booking is restamped to
        now in the background. At most one rebooking: a message always goes."""
        if self.rate <= 0 or not ticket.booking:
            return
        if time.monotonic() - ticket.due > STALE_S and not ticket.rebooked:
            ticket.rebooked = True
            self.rebooked += 1
            await self._wait(ticket, self._retake)
        now = time.monotonic()
        if now - ticket.due > LATE_S:
            self.restamped += 1
            call = RateArgs(
                self.gateway, self._spacing, ticket.booked, int(MAX_AHEAD_S * 1_000_000),
                self._window_us, self._cap, int(CATCH_UP_S * 1_000_000), ticket.booking,
                sent_us=self.clock.redis_us(now),
            )  # fmt: skip
            ticket.booking = ""
            task = asyncio.create_task(self._restamp(call), name=f"parley-restamp-{self.gateway}")
            self._restamps.add(task)
            task.add_done_callback(self._restamps.discard)

    async def _rate(self, call: RateArgs) -> RateReply:
        """rate.lua on the store's shared pipeline: one round trip with whatever else this
        process sends to Redis in the same loop pass (turns, other sends' records)."""

        async def add(pipe: Pipeline) -> None:
            await self.store.run("rate", keys=call.to_keys(), args=call.to_argv(), client=pipe)

        (raw,) = await self.store.coalescer.run(add)
        return RateReply.parse(raw)

    async def _restamp(self, call: RateArgs) -> None:
        try:
            got = await self._rate(call)
        except (aioredis.RedisError, OSError) as exc:
            self.overdue += 1
            log.warning("pacer %s: a late send's time was not recorded (%s): a second ahead may hold "
                        "one segment too many", self.gateway, exc)  # fmt: skip
            return
        if got.overdue:
            self.overdue += 1
            log.warning("pacer %s: a late send's time was recorded %.2fs after it went: a second "
                        "ahead may hold one segment too many", self.gateway,
                        got.now_us / 1e6 - call.sent_us / 1e6 if call.sent_us else 0.0)  # fmt: skip

    async def next_part(self) -> None:
        """The next part of a message going out part by part (SMPP): a one-segment slot, first
        in line (the message is on its way), rechecked as any send is."""
        ticket = Ticket(cost=1, urgent=True)
        await self._wait(ticket, self._retake)
        await self.recheck(ticket)

    async def _wait(self, ticket: Ticket, queue: deque[Ticket]) -> None:
        if ticket.done.done():
            ticket.done = asyncio.get_running_loop().create_future()
        queue.append(ticket)
        self._wake.set()
        await ticket.done

    def promote(self, ticket: Ticket) -> None:
        """A later reply to the same contact waits behind this bulk message: serve it as a reply."""
        if ticket.urgent:
            return
        ticket.urgent = True
        with contextlib.suppress(ValueError):
            self._queues[False].remove(ticket)
            self._queues[True].append(ticket)

    def _in_line(self) -> Iterator[Ticket]:
        """The tickets waiting, in the order they are served (left queued; cancelled ones at the
        head of a queue are dropped, the others skipped)."""
        for q in (self._retake, self._queues[True], self._queues[False]):
            while q and q[0].done.done():  # cancelled while waiting (shutdown)
                q.popleft()
            yield from (t for t in q if not t.done.done())

    def _taker(self, segments: int) -> Ticket | None:
        """Who takes a slot of ``segments`` now it is due: the first in line it is wide enough
        for (a reply that arrived since the booking goes before the bulk it was booked for)."""
        return next((t for t in self._in_line() if t.cost <= segments), None)

    def _unqueue(self, ticket: Ticket) -> None:
        for q in (self._retake, self._queues[True], self._queues[False]):
            with contextlib.suppress(ValueError):
                q.remove(ticket)
                return

    async def _book(self, line: list[Ticket]) -> tuple[list[tuple[float, int, str]], float]:
        """Slots for the tickets in ``line``, in one call: [(when on the monotonic clock,
        segments, booking)] for those granted (a prefix: the first beyond the horizon ends it),
        and when the first refused one would have been."""
        first = line[0]
        call = RateArgs(
            self.gateway, self._spacing, first.cost, int(MAX_AHEAD_S * 1_000_000), self._window_us,
            self._cap, int(CATCH_UP_S * 1_000_000), first.booking, more=tuple(t.cost for t in line[1:]),
        )  # fmt: skip
        got = await self._rate(call)
        self.clock.sample(got.now_us, time.monotonic())
        self.bookings += 1
        if not got.granted:
            return [], self.clock.local(got.slot_us)
        first.booking = ""  # given back (or still logged): the slot below replaces it
        slots = [(self.clock.local(got.slot_us), first.cost, got.booking)]
        slots += [(self.clock.local(at), t.cost, b) for (at, b), t in zip(got.more, line[1:], strict=False)]
        return slots, slots[-1][0]

    async def _calibrate(self, samples: int = 5) -> None:
        """A few readings of Redis's clock before the first booking, so the first slots are not
        mapped through one slow reply (the mapping errs late, never early; bookings refine it)."""
        for _ in range(samples):
            if self._closing:
                return
            with contextlib.suppress(aioredis.RedisError, OSError):
                secs, micros = await self.store.redis.time()
                self.clock.sample(int(secs) * 1_000_000 + int(micros), time.monotonic())

    async def _run(self) -> None:
        await self._calibrate()
        backoff = 0.05
        while not self._closing:
            line = list(itertools.islice(self._in_line(), BATCH))
            if not line:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                slots, due = await self._book(line)
                backoff = 0.05
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                log.warning("pacer %s: Redis unavailable (%s); retrying in %.2fs", self.gateway, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except Exception:
                log.exception("pacer %s: unexpected error; continuing", self.gateway)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if not slots:
                # Other processes booked ahead of us: ask again when our turn could come.
                await asyncio.sleep(max(due - MAX_AHEAD_S - time.monotonic(), 0.001))
                continue
            for due, segments, booking in slots:
                await _until(due)
                if time.monotonic() - due > STALE_S:
                    # A stall passed it: left unused (it still counts in its window), not
                    # handed out to be given back at the send; the rest go, and then fresh ones.
                    self.passed += 1
                    continue
                ticket = self._taker(segments)
                if ticket is None:
                    continue  # cancelled meanwhile: the slot goes unused
                self._unqueue(ticket)
                ticket.booking, ticket.booked = booking, segments
                ticket.due = due  # late or not: recheck, just before the send, decides
                ticket.done.set_result(None)


async def _until(t: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``t``, never less (uvloop rounds timers to ms)."""
    while (left := t - time.monotonic()) > 0:  # noqa: ASYNC110 (a deadline, not an event)
        await asyncio.sleep(left)
