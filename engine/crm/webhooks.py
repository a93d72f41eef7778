"""Outcome webhooks: the flow outcome events (``p:fx:T``) pushed to the CRM, signed, in order per contact.

One dispatcher per ``crm.webhooks[I]``, run where the caller runs (the main process of ``parley
run``, never a ``parley worker`` process) and, of several such processes, only in the one holding
the webhooks lease (engine/app/singleton.py): two dispatchers of one webhook would split the
streams and lose the per-contact order. It reads every shard's outcome stream ``p:fx:T`` (a contact's events
are all in its shard's, in order) and the webhook's replay stream ``p:whre:{wI}``, each in the
consumer group ``webhook-I-<crc32 of the URL>`` (engine/core/keys.py), so a new URL is a new
cursor. A new group starts at the end of each ``p:fx:T``: a webhook gets the events from when it
first ran, not the history (reports and exports have that).

An event's id (``X-Parley-Event-Id``) is its entry id in its shard's stream, prefixed with the
shard when that is not 0 (``3/1767225600000-0``): entry ids are unique within one stream only.
Shard 0's are bare, as every event's was before the streams were per shard (``parley migrate``
moves the old stream to shard 0, so an event pending then keeps its id).

Each event of a subscribed type is POSTed (engine/crm/webhooks_http.py); others are acknowledged
unsent. A 2xx acknowledges the entry (a replayed one is also deleted). Timeouts, connection
errors, 408, 425, 429 and 5xx are tried again after ``backoff`` doubling with jitter up to
``backoff_max`` (a ``Retry-After`` wins), up to ``max_attempts``; then, or at once on another
4xx, the event is added to ``p:whdead:{wI}`` with the last error and then acknowledged (two
steps, as the letter and the entry are in different slots: a crash between them leaves the
entry pending, so it is sent again and may be dead-lettered twice, never lost).

Order: events wait in one lane per contact, in stream order; a contact's next request is made
only once its previous one is acknowledged or dead-lettered. Up to MAX_IN_FLIGHT requests run
at once (different contacts); at most BUFFER entries are held in memory.

Crash: entries read and not acknowledged stay pending in the group. On start (and after a
Redis outage) the dispatcher reads all of its pending entries first and sends them again: at
least once, with the same ``X-Parley-Event-Id``. Stopping cancels back-off waits, gives
requests in flight ``engine.shutdown_timeout``, and leaves the rest pending.

Trimming: each ``p:fx:T`` keeps ``engine.outcome_events_max`` entries; one trimmed before this
webhook read it is lost to it, measured per stream before reads and on start
(engine/crm/webhooks_gap.py), logged and counted (``parley_webhook_events_lost_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from engine.core import keys
from engine.core.config import WebhookConfig
from engine.core.consumer import Entry, StreamConsumer
from engine.core.numbers import mask
from engine.core.ports import Services
from engine.crm import webhooks_gap, webhooks_http

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 16
BUFFER = 1024
#: Consumer name in every webhook group (a restarted process, on any host, re-reads its entries).
CONSUMER = "dispatcher"
GAP_CHECK_S = 30.0
#: Dead letters kept per webhook (approximately; the oldest are trimmed).
DEAD_MAX = 100_000


@dataclass
class Item:
    stream: str
    entry_id: bytes  # in its stream (what is acknowledged)
    #: X-Parley-Event-Id: the p:fx:T entry id, "S/" before it if S > 0 (a replay keeps the original)
    event_id: str
    raw: bytes  # the event as stored in p:fx:T
    contact: str
    payload: dict[str, Any] = field(default_factory=dict)


def event_id_of(shard: int, entry_id: bytes | str) -> str:
    """The id a CRM sees for entry ``entry_id`` of shard ``shard``'s outcome stream."""
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return eid if shard == 0 else f"{shard}/{eid}"


class WebhookDispatcher(StreamConsumer):
    """Delivers every ``p:fx:T`` to one webhook (see the module docstring). ``async with``."""

    def __init__(self, rt: Services, index: int, hook: WebhookConfig, session: aiohttp.ClientSession) -> None:
        #: Every shard's outcome stream -> its shard.
        self.fx = {keys.flow_events(s): s for s in range(rt.config.engine.shards)}
        self.retry, self.dead = keys.webhook_retry(index), keys.webhook_dead(index)
        group = keys.webhook_group(index, hook.url)
        super().__init__(rt.store.redis, group, CONSUMER, [*self.fx, self.retry])
        self.label = f"webhook-{index}"
        self.name = str(index)
        self.hook = hook
        self.rt = rt
        # Its loss and dead-letter series exist at 0 from the start, so an alert on their
        # increase sees the first one (deploy/prometheus/alerts.yml).
        rt.metrics.webhook(self.name, "dead", 0)
        rt.metrics.webhook_lost(self.name, 0)
        self.stop_timeout = rt.config.engine.shutdown_timeout
        self._session = session
        self._events = frozenset(hook.events)
        self._lanes: dict[str, deque[Item]] = {}  # contact -> items waiting, in stream order
        self._busy: set[str] = set()  # contacts with a request (or its retries) under way
        self._held: set[tuple[str, bytes]] = set()  # (stream, entry id) waiting or being sent
        self._tasks: set[asyncio.Task[None]] = set()
        self._space = asyncio.Event()
        self._checked = 0.0
        self._gap: dict[str, int] = {}  # stream -> the gap measured last

    async def __aexit__(self, *exc: object) -> None:
        self._stopping.set()
        self._space.set()
        await super().__aexit__(*exc)
        if self._tasks:
            _, rest = await asyncio.wait(set(self._tasks), timeout=self.stop_timeout)
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

    async def _ensure_groups(self) -> None:
        for stream, start in (*((fx, "$") for fx in self.fx), (self.retry, "0")):
            try:
                await self.redis.xgroup_create(stream, self.group, id=start, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        # Pending entries trimmed from a p:fx:T (or erased) while this dispatcher was down.
        deleted = 0
        for fx in self.fx:
            deleted += await webhooks_gap.drop_deleted_pending(self.redis, fx, self.group, CONSUMER)
        if deleted:
            self._lost(deleted, "pending when the dispatcher stopped")

    async def room(self) -> int:
        waited = False
        while len(self._held) >= BUFFER and not self._stopping.is_set():
            self._space.clear()
            waited = True
            await self._space.wait()
        if waited or time.monotonic() - self._checked > GAP_CHECK_S:
            await self._check_gap()
        return max(1, BUFFER - len(self._held))

    async def handle(self, entries: list[Entry], recovering: bool) -> bool:
        if recovering and entries:
            entries = entries + await self._rest_of_pending(entries)
        skipped: list[tuple[str, bytes]] = []
        for stream, entry_id, fields in entries:
            if (stream, entry_id) in self._held:  # a re-read of pending entries returns those in hand
                continue
            item = self._item(stream, entry_id, fields)
            if item is None:
                skipped.append((stream, entry_id))
                continue
            self._held.add((stream, entry_id))
            self._lanes.setdefault(item.contact, deque()).append(item)
        if skipped:
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream, entry_id in skipped:
                    self._ack(pipe, stream, entry_id)
                await pipe.execute()
        self._pump()
        return False

    async def _rest_of_pending(self, first: list[Entry]) -> list[Entry]:
        """This consumer's pending entries after the first page (all of them: a crash leaves at
        most what was held, about BUFFER)."""
        last = {s: b"0" for s in self.streams} | {s: entry_id for s, entry_id, _ in first}
        out: list[Entry] = []
        for stream, after in last.items():
            while True:
                resp: Any = await self.redis.xreadgroup(self.group, CONSUMER, {stream: after}, count=1000)
                batch = [(stream, eid, f) for _, got in resp or [] for eid, f in got if f]
                if not resp or not resp[0][1]:
                    break
                out += batch
                after = resp[0][1][-1][0]
        return out

    def _item(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes]) -> Item | None:
        """What to send for an entry, or None to acknowledge it unsent (a type not subscribed)."""
        raw = fields.get(b"e", b"")
        if stream == self.retry:
            event_id = fields[b"id"].decode() if b"id" in fields else entry_id.decode()
        else:
            event_id = event_id_of(self.fx[stream], entry_id)
        try:
            body = webhooks_http.payload(event_id, raw)
        except orjson.JSONDecodeError:
            log.error("%s: unreadable outcome event %s; skipped", self.label, event_id)
            return None
        if body["type"] not in self._events:
            return None
        return Item(stream, entry_id, event_id, raw, str(body["contact"]), body)

    def _pump(self) -> None:
        """Start requests for contacts with events waiting and none under way, up to MAX_IN_FLIGHT."""
        while not self._stopping.is_set() and len(self._tasks) < MAX_IN_FLIGHT:
            batch: list[Item] = []
            for contact, lane in list(self._lanes.items()):
                if contact in self._busy:
                    continue
                while lane and len(batch) < self.hook.batch:
                    batch.append(lane.popleft())
                self._busy.add(contact)
                if not lane:
                    del self._lanes[contact]
                if len(batch) >= self.hook.batch:
                    break
            if not batch:
                return
            task = asyncio.create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, items: list[Item]) -> None:
        try:
            await self._deliver(items)
        except Exception:  # a bug must not leave the contact's lane stuck: the entries stay pending
            log.exception("%s: delivering %s failed", self.label, items[0].event_id)
        finally:
            for it in items:
                self._held.discard((it.stream, it.entry_id))
                self._busy.discard(it.contact)
            self._space.set()
            self._pump()

    async def _deliver(self, items: list[Item]) -> None:
        hook = self.hook
        body = orjson.dumps(items[0].payload if hook.batch == 1 else [it.payload for it in items])
        ids = ",".join(it.event_id for it in items)
        answer = webhooks_http.Answer("retry")
        attempt = 0
        while attempt < hook.max_attempts:
            attempt += 1
            hdrs = webhooks_http.headers(hook.secret, int(time.time()), body, ids)
            answer = await webhooks_http.post(self._session, hook.url, body, hdrs, hook.timeout)
            if answer.outcome == "ok":
                if await self._finish(items, None, attempt):
                    now = time.time()
                    took = [max(0.0, now - int(it.entry_id.split(b"-")[0]) / 1000) for it in items]
                    self.rt.metrics.webhook(self.name, "delivered", len(items), took)
                return
            if answer.outcome == "reject" or attempt == hook.max_attempts or self._stopping.is_set():
                break
            self.rt.metrics.webhook(self.name, "retry", len(items))
            wait = answer.retry_after
            if wait is None:
                wait = min(hook.backoff * 2 ** (attempt - 1), hook.backoff_max) * random.uniform(0.5, 1.0)
            log.info(
                "%s: %s for %s contact=%s (attempt %d of %d); again in %.1fs", self.label, answer.error,
                ids, mask(items[0].contact), attempt, hook.max_attempts, wait,
            )  # fmt: skip
            await self._pause(wait)
        if self._stopping.is_set() and answer.outcome == "retry":
            return  # stays pending: sent again on restart
        log.warning(
            "%s: giving up on %s contact=%s after %d attempt(s): %s; dead-lettered",
            self.label, ids, mask(items[0].contact), attempt, answer.error,
        )  # fmt: skip
        if await self._finish(items, answer.error, attempt):
            self.rt.metrics.webhook(self.name, "dead", len(items))

    async def _pause(self, seconds: float) -> None:
        """Back-off that stopping cuts short."""
        sleeper = asyncio.ensure_future(self.rt.clock.sleep(seconds))
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stopper.cancel()

    async def _finish(self, items: list[Item], error: str | None, attempts: int) -> bool:
        """Acknowledge (after dead-lettering, when ``error``: the letters are written first, then
        the entries acknowledged, so a crash between the two sends again rather than loses);
        retried while Redis is away."""
        now = str(self.rt.clock.now_ms())
        lettered = error is None
        for delay in (0.1, 0.5, 1, 2, 5):
            try:
                if not lettered:
                    async with self.redis.pipeline(transaction=True) as pipe:  # one slot: {wI}
                        for it in items:
                            letter = {
                                "id": it.event_id,
                                "e": it.raw,
                                "error": error,
                                "attempts": attempts,
                                "at": now,
                            }
                            pipe.xadd(self.dead, letter, maxlen=DEAD_MAX, approximate=True)  # type: ignore[arg-type]
                        await pipe.execute()
                    lettered = True
                async with self.redis.pipeline(transaction=False) as pipe:
                    for it in items:
                        self._ack(pipe, it.stream, it.entry_id)
                    await pipe.execute()
                return True
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError):
                await asyncio.sleep(delay)
        log.error("%s: could not record the outcome of %s; it stays pending", self.label, items[0].event_id)
        return False

    def _ack(self, pipe: Any, stream: str, entry_id: bytes) -> None:
        pipe.xack(stream, self.group, entry_id)
        if stream == self.retry:
            pipe.xdel(stream, entry_id)

    async def _check_gap(self) -> None:
        """Count entries trimmed from each p:fx:T before this group read them (see the module docstring)."""
        self._checked = time.monotonic()
        for fx in self.fx:
            lost = await webhooks_gap.trimmed_unread(self.redis, fx, self.group)
            before = self._gap.get(fx, 0)
            if lost > before:  # one gap is measured again until the group reads past it
                why = f"trimmed from {fx} before it was sent (engine.outcome_events_max)"
                self._lost(lost - before, why)
            self._gap[fx] = lost

    def _lost(self, n: int, why: str) -> None:
        log.warning("%s: %d outcome event(s) lost to this webhook: %s", self.label, n, why)
        self.rt.metrics.webhook_lost(self.name, n)


class Webhooks:
    """Owns the HTTP session and one dispatcher per ``crm.webhooks`` entry. ``async with``."""

    def __init__(self, rt: Services) -> None:
        self.rt = rt
        self.dispatchers: list[WebhookDispatcher] = []
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Webhooks:
        hooks = self.rt.config.crm.webhooks
        try:
            session = aiohttp.ClientSession(
                headers={"User-Agent": "parley"},
                connector=aiohttp.TCPConnector(limit=MAX_IN_FLIGHT * max(1, len(hooks))),
            )
            self._stack.push_async_callback(session.close)
            for i, hook in enumerate(hooks):
                d = await self._stack.enter_async_context(WebhookDispatcher(self.rt, i, hook, session))
                self.dispatchers.append(d)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()
