"""An SMPP server account's queue: receipts and MOs waiting in Redis for its binds, on any process.

    producer (receipt router, MO intake) --smpps_push.lua--> p:smq:{sm:A}  (bounded: count, age)
                                                                 |  consumer group "binds"
    this process's Outbox for A  --XREADGROUP (as many as its binds have room for)--+
        -> one of A's receiver/transceiver binds here (round robin, within its window)
        -> deliver_sm_resp OK: XACK + XDEL        (only then is it gone)
        -> the bind dropped first, or answered a temporary error: back to the Outbox's own
           list, offered to the next bind with room (here), never lost
        -> this process died: the entries stay pending under its consumer; any other process's
           Outbox for A claims them (XAUTOCLAIM) once idle for ``redeliver_after``

An ESME that is away loses nothing: entries wait (unread, or pending) until it binds again; an
entry older than the account's ``queue_age`` is dropped when it is next offered, and the queue is
trimmed to ``queue_max`` entries (the oldest go first) and to the age limit on every push.

At least once: a deliver_sm answered OK whose XACK was lost (Redis away, the process killed
between the two) is offered again; ESMEs see the same receipted_message_id twice then.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
from collections import deque
from collections.abc import Awaitable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from engine.core import keys
from engine.core.config import SmppAccountConfig
from engine.core.ports import Services
from gateways.scripts.smpps_push import SmppsPushArgs, parse_pushed

log = logging.getLogger(__name__)

#: An MO or receipt already queued is remembered this long (a retry of it is queued once).
SEEN_TTL_S = 86400
BLOCK_MS = 1000

#: (entry id, fields)
Item = tuple[str, dict[str, str]]


def digest(*parts: str) -> str:
    return hashlib.blake2b("|".join(parts).encode(), digest_size=10).hexdigest()


async def push(
    rt: Services, account: SmppAccountConfig, what: str, fields: dict[str, str]
) -> tuple[bool, str]:
    """Queue an entry for ``account``'s binds once per ``what`` (a digest key); (new, entry id)."""
    min_id = rt.clock.now_ms() - int(account.queue_age * 1000)
    call = SmppsPushArgs(
        account.system_id, digest(what), account.queue_max, max(0, min_id), SEEN_TTL_S, tuple(fields.items())
    )
    return parse_pushed(await rt.store.run("smpps_push", call.to_keys(), call.to_argv()))


class Receiver(Protocol):
    """A bind that takes deliver_sm (server_session.ServerSession)."""

    @property
    def room(self) -> int: ...

    async def deliver(self, fields: dict[str, str]) -> int:
        """Send one entry as deliver_sm; its deliver_sm_resp status. Raises ConnectionError
        when the bind went away before it was answered."""
        ...


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class Outbox:
    """Account ``account``'s entries in this process, fed to its binds here (module docstring)."""

    def __init__(self, rt: Services, account: SmppAccountConfig, redeliver_after_s: float) -> None:
        self.rt = rt
        self.account = account
        self.stream = keys.smpp_server_queue(account.system_id)
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.redeliver_ms = int(redeliver_after_s * 1000)
        self.receivers: list[Receiver] = []
        #: Entries this process holds (read, claimed, or handed back by a bind that dropped).
        self._held: deque[Item] = deque()
        self._held_ids: set[str] = set()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._next = 0

    @property
    def redis(self) -> aioredis.Redis:
        return self.rt.store.redis

    def add(self, receiver: Receiver) -> None:
        self.receivers.append(receiver)
        self.wake()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"smpp-server {self.account.system_id} outbox")

    def remove(self, receiver: Receiver) -> None:
        with contextlib.suppress(ValueError):
            self.receivers.remove(receiver)

    def wake(self) -> None:
        self._changed.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for t in list(self._sends):
            t.cancel()
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)

    def _room(self) -> int:
        return sum(max(0, r.room) for r in self.receivers)

    async def _run(self) -> None:
        await self._ensure_group()
        claimed_at = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                room = self._room()
                if room <= 0:
                    self._changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), 1.0)
                    continue
                if loop.time() - claimed_at >= self.redeliver_ms / 2000:
                    claimed_at = loop.time()
                    await self._claim()
                if not self._held:
                    await self._read(room)
                self._dispatch()
            except asyncio.CancelledError:
                raise
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                log.warning("smpp-server %s: queue unreadable (%s); retrying", self.account.system_id, exc)
                await asyncio.sleep(1.0)
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await self._ensure_group()
                else:
                    log.exception("smpp-server %s: Redis refused a queue read", self.account.system_id)
                    await asyncio.sleep(1.0)
            except Exception:
                log.exception("smpp-server %s: outbox error; continuing", self.account.system_id)
                await asyncio.sleep(1.0)

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, keys.SMPP_SERVER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _claim(self) -> None:
        """Take over what dead processes' binds were given and never answered."""
        start: Any = "0-0"
        while True:
            nxt, entries, *_ = await self.redis.xautoclaim(
                self.stream, keys.SMPP_SERVER_GROUP, self.consumer, min_idle_time=self.redeliver_ms,
                start_id=start, count=100,
            )  # fmt: skip
            for eid, fields in entries:
                if fields:
                    self._hold((_text(eid), {_text(k): _text(v) for k, v in fields.items()}))
            if _text(nxt) == "0-0":
                return
            start = nxt

    def _hold(self, item: Item) -> None:
        if item[0] not in self._held_ids:
            self._held_ids.add(item[0])
            self._held.append(item)

    async def _read(self, room: int) -> None:
        self._changed.clear()
        resp: Any = await self.redis.xreadgroup(
            keys.SMPP_SERVER_GROUP, self.consumer, {self.stream: ">"}, count=room, block=BLOCK_MS
        )
        for _, batch in resp or []:
            for eid, fields in batch:
                if fields:
                    self._hold((_text(eid), {_text(k): _text(v) for k, v in fields.items()}))

    def _dispatch(self) -> None:
        cutoff = self.rt.clock.now_ms() - int(self.account.queue_age * 1000)
        while self._held:
            ready = [r for r in self.receivers if r.room > 0]
            if not ready:
                return
            eid, fields = self._held.popleft()
            if int(eid.split("-")[0]) < cutoff:
                log.warning("smpp-server %s: %s %s dropped: older than queue_age", self.account.system_id,
                            fields.get("k", "entry"), eid)  # fmt: skip
                self._spawn(self._ack(eid))
                continue
            receiver = ready[self._next % len(ready)]
            self._next += 1
            self._spawn(self._send(receiver, eid, fields))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, receiver: Receiver, eid: str, fields: dict[str, str]) -> None:
        try:
            status = await receiver.deliver(fields)
        except (ConnectionError, TimeoutError) as exc:
            log.info("smpp-server %s: %s not answered (%s); offered again", self.account.system_id, eid, exc)
            self._requeue(eid, fields)
            return
        if status == 0:
            await self._ack(eid)
        elif status == 0x65:  # ESME_RX_P_APPN: the ESME will never take it
            log.warning(
                "smpp-server %s: %s refused for good by the ESME; dropped", self.account.system_id, eid
            )
            await self._ack(eid)
        else:  # a temporary refusal: offered again a little later
            await asyncio.sleep(1.0)
            self._requeue(eid, fields)

    def _requeue(self, eid: str, fields: dict[str, str]) -> None:
        self._held_ids.discard(eid)
        self._hold((eid, fields))
        self.wake()

    async def _ack(self, eid: str) -> None:
        self._held_ids.discard(eid)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, keys.SMPP_SERVER_GROUP, eid)
            pipe.xdel(self.stream, eid)
            await pipe.execute()
        self.wake()


async def backlog(redis: aioredis.Redis, account: str) -> int:
    """Entries waiting for the account's binds (unread and unanswered)."""
    return int(await redis.xlen(keys.smpp_server_queue(account)))


async def push_mo(
    rt: Services,
    account: SmppAccountConfig,
    *,
    gateway: str,
    provider_id: str,
    contact: str,
    to: str,
    text: str,
) -> tuple[bool, str]:
    """Queue an inbound text to one of ``account``'s numbers for its binds, once per (gateway,
    provider id); (new, entry id)."""
    fields = {"k": "m", "from": contact, "to": to, "text": text, "gw": gateway, "at": str(rt.clock.now_ms())}
    return await push(rt, account, f"m|{gateway}|{provider_id}", fields)
