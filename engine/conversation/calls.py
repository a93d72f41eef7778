"""The caller: makes the CRM webhook requests that flows ask for, off the turn's path.

A turn that reaches a ``call`` node commits a job to its shard's ``p:calls:T`` and waits. The
caller reads every shard's calls stream, makes the request (with the flow's timeout) and appends
the answer to the contact's shard stream as a ``call`` event, so the answer is ordered with the
contact's texts like anything else; the job is acknowledged in the same round trip (the job's
stream and the shard's inbound stream share a slot). A caller that dies mid-request leaves the job pending
and re-reads it on start (the conversation takes the first answer; a second is stale). If no
answer comes at all, the session's safety timer takes the failure route.

Any number of callers run (one in each worker-role process), each a consumer of its own name
(host, pid): a job is in one caller's hands at a time. A caller that died, or stopped on a host
that never runs one again, leaves its jobs pending under its name: every ``RECLAIM_EVERY_S``
each caller takes over (XAUTOCLAIM) the jobs pending longer than ``STALE_MS``, far beyond any
call in progress (the longest CRM timeout is 30 s, then the answer's recording retries for about
9 s), and forgets the callers that hold nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis

from engine.core import keys
from engine.core.consumer import Entry, StreamConsumer, claim_pending
from engine.core.numbers import mask
from engine.core.ports import Services

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 64
MAX_ANSWER_BYTES = 64 * 1024
#: A job pending this long with another caller is that caller's no more (see the docstring).
STALE_MS = 60_000
RECLAIM_EVERY_S = 10.0


class Caller(StreamConsumer):
    """Owns the call loop. ``async with Caller(rt):``."""

    label = "caller"

    def __init__(
        self, rt: Services, stale_ms: int = STALE_MS, reclaim_every: float = RECLAIM_EVERY_S
    ) -> None:
        streams = [keys.calls(s) for s in range(rt.config.engine.shards)]
        me = f"{socket.gethostname()}-{os.getpid()}-c-{secrets.token_hex(2)}"  # unique per caller run
        super().__init__(rt.store.redis, keys.CALLS_GROUP, me, streams)
        self.rt = rt
        self.stale_ms = stale_ms
        self.reclaim_every = reclaim_every
        self._reclaim: asyncio.Task[None] | None = None
        self.stop_timeout = rt.config.engine.shutdown_timeout
        self._inflight: set[asyncio.Task[None]] = set()
        self._busy: set[tuple[str, bytes]] = set()  # (stream, job id) being called (pending until answered)
        self._session: aiohttp.ClientSession | None = None
        #: Told of every answered call (contact, job, ok, answer) before the answer is recorded;
        #: ``parley chat`` prints them. Listeners must not block.
        self.listeners: list[Callable[[str, dict[str, Any], bool, dict[str, Any]], None]] = []

    async def __aenter__(self) -> Caller:
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": "parley", "Accept": "application/json"},
            connector=aiohttp.TCPConnector(limit=MAX_IN_FLIGHT),
        )
        await super().__aenter__()
        self._reclaim = asyncio.create_task(self._reclaim_stale(), name="parley-caller-reclaim")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reclaim is not None:
            self._reclaim.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reclaim
        await super().__aexit__(*exc)
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=self.stop_timeout)
        if self._session is not None:
            await self._session.close()

    async def _reclaim_stale(self) -> None:
        """Take over the jobs other callers left pending for ``stale_ms`` (they died)."""
        r = self.rt.store.redis
        while not self._stopping.is_set():
            try:
                claimed = 0
                for stream in self.streams:
                    claimed += await claim_pending(r, stream, self.group, self.consumer, self.stale_ms)
                if claimed:
                    log.warning(
                        "caller %s: took over %d CRM calls a stopped caller left", self.consumer, claimed
                    )
                    self._recover = True  # read them (pending) before anything new
            except (aioredis.RedisError, OSError) as exc:
                log.debug("caller: reclaim skipped (%s)", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.reclaim_every)

    async def room(self) -> int:
        while len(self._inflight) >= MAX_IN_FLIGHT:
            await asyncio.wait(set(self._inflight), return_when=asyncio.FIRST_COMPLETED)
        return MAX_IN_FLIGHT - len(self._inflight)

    async def handle(self, entries: list[Entry], recovering: bool) -> bool:
        for stream, entry_id, fields in entries:
            if (stream, entry_id) in self._busy:  # a re-read of pending jobs returns those in flight too
                continue
            self._busy.add((stream, entry_id))
            task = asyncio.create_task(self._call(stream, entry_id, fields))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return False

    async def _call(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            await self._answer(stream, entry_id, fields)
        finally:
            self._busy.discard((stream, entry_id))

    async def _answer(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        contact = fields[b"c"].decode()
        job = orjson.loads(fields[b"j"])
        ok, answer = await self._cached(job)
        for listener in self.listeners:
            listener(contact, job, ok, answer)
        if not ok:
            log.warning(
                "CRM call failed contact=%s url=%s: %s", mask(contact), job["url"], answer.get("error")
            )
        shard = int(job["shard"])
        event = {
            "k": "call", "c": contact, "tt": job["token"], "ok": "1" if ok else "0",
            "x": orjson.dumps(answer), "ts": str(self.rt.clock.now_ms()),
        }  # fmt: skip
        for delay in (0.1, 0.5, 1, 2, 5):
            try:
                async with self.rt.store.redis.pipeline(transaction=False) as pipe:
                    pipe.xadd(keys.inbound_stream(shard), event)  # type: ignore[arg-type]
                    pipe.xack(stream, keys.CALLS_GROUP, entry_id)
                    pipe.xdel(stream, entry_id)
                    await pipe.execute()
                return
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError):
                await asyncio.sleep(delay)
        log.error("caller: could not record the answer for %s; the job stays pending", mask(contact))

    async def _cached(self, job: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """A GET with ``cache`` reuses a successful answer to the same request (URL and headers)
        for that long; failures are never cached. Redis away: the CRM is asked."""
        ttl = float(job.get("cache") or 0)
        if not ttl:
            return await self._request(job)
        ident = orjson.dumps([job["method"], job["url"], sorted((job.get("headers") or {}).items())])
        key = keys.call_cache(hashlib.blake2b(ident, digest_size=16).hexdigest())
        r = self.rt.store.redis
        with contextlib.suppress(aioredis.RedisError, OSError):
            hit = await r.get(key)
            if hit is not None:
                self.rt.metrics.crm_call("cached")
                return True, orjson.loads(hit)
        ok, answer = await self._request(job)
        self.rt.metrics.crm_call("ok" if ok else "failed")
        if ok:
            with contextlib.suppress(aioredis.RedisError, OSError):
                await r.set(key, orjson.dumps(answer), px=int(ttl * 1000))
        return ok, answer

    async def _request(self, job: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """(True, answer object) for a 2xx with a JSON object (or no body); else (False, {error})."""
        assert self._session is not None
        try:
            async with self._session.request(
                job["method"],
                job["url"],
                json=job.get("body"),
                headers=job.get("headers") or None,
                timeout=aiohttp.ClientTimeout(total=float(job["timeout"])),
            ) as resp:
                raw = await resp.content.read(MAX_ANSWER_BYTES + 1)
                status = resp.status
        except TimeoutError:
            return False, {"error": f"no answer within {job['timeout']}s"}
        except aiohttp.ClientError as exc:
            return False, {"error": f"{type(exc).__name__}: {exc}"}
        if not 200 <= status < 300:
            return False, {"error": f"HTTP {status}", "status": status}
        if len(raw) > MAX_ANSWER_BYTES:
            return False, {"error": f"answer larger than {MAX_ANSWER_BYTES} bytes"}
        if not raw.strip():
            return True, {}
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return False, {"error": "answer is not JSON"}
        return (
            (True, answer) if isinstance(answer, dict) else (False, {"error": "answer is not a JSON object"})
        )
