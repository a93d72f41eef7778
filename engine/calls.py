"""The caller: makes the CRM webhook requests that flows ask for, off the turn's path.

A turn that reaches a ``call`` node commits a job to ``p:calls`` and waits. The caller makes the
request (with the flow's timeout) and appends the answer to the contact's shard stream as a
``call`` event, so the answer is ordered with the contact's texts like anything else; the job
is acknowledged in the same round trip. A caller that dies mid-request leaves the job pending
and re-reads it on start (the conversation takes the first answer; a second is stale). If no
answer comes at all, the session's safety timer takes the failure route.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import redis.asyncio as aioredis

from engine import keys
from engine.numbers import mask
from engine.worker import ensure_group

if TYPE_CHECKING:
    from engine.runtime import Runtime

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 64
MAX_ANSWER_BYTES = 64 * 1024


class Caller:
    """Owns the call loop. ``async with Caller(rt):``."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.consumer = f"{socket.gethostname()}-c"
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._idle = False

    async def __aenter__(self) -> Caller:
        await ensure_group(self.rt.store.redis, keys.calls(), keys.CALLS_GROUP)
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": "parley", "Accept": "application/json"},
            connector=aiohttp.TCPConnector(limit=MAX_IN_FLIGHT),
        )
        self._task = asyncio.create_task(self._run(), name="parley-caller")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping.set()
        if self._task is not None:
            if self._idle:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=self.rt.config.engine.shutdown_timeout)
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        recovering, backoff = True, 0.1
        while not self._stopping.is_set():
            try:
                if len(self._inflight) >= MAX_IN_FLIGHT:
                    await asyncio.wait(set(self._inflight), return_when=asyncio.FIRST_COMPLETED)
                    continue
                self._idle = True
                resp: Any = await self.rt.store.redis.xreadgroup(
                    keys.CALLS_GROUP,
                    self.consumer,
                    {keys.calls(): "0" if recovering else ">"},
                    count=MAX_IN_FLIGHT - len(self._inflight),
                    block=None if recovering else 500,
                )
                self._idle = False
                recovering, backoff = False, 0.1
                for entry_id, fields in (e for _, es in resp or [] for e in es if e[1]):
                    task = asyncio.create_task(self._call(entry_id, fields))
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                self._idle = False
                log.warning("caller: Redis unavailable (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff, recovering = min(backoff * 2, 5.0), True
            except Exception:
                self._idle = False
                log.exception("caller: unexpected error; continuing")
                await asyncio.sleep(backoff)

    async def _call(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        contact = fields[b"c"].decode()
        job = orjson.loads(fields[b"j"])
        ok, answer = await self._request(job)
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
                    pipe.xack(keys.calls(), keys.CALLS_GROUP, entry_id)
                    pipe.xdel(keys.calls(), entry_id)
                    await pipe.execute()
                return
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError):
                await asyncio.sleep(delay)
        log.error("caller: could not record the answer for %s; the job stays pending", mask(contact))

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
