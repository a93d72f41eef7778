"""query_sm for receipts that are overdue: ask the SMSC what became of a message whose final
receipt has not come ``query_after`` after it was sent (SMPP 3.4 section 4.8).

While a connector has ``query_after``, each message it sends (asking for receipts) is noted in
Redis (``keys.smpp_awaiting``: provider id -> sent at; ``keys.smpp_awaiting_info``: what the
query needs), and its final receipt takes it out again. Every ``query_interval`` the process
holding bind 0 (one process per connector, so the rate below is the connector's) takes up to
``query_batch`` of those sent longer than ``query_after`` ago, oldest first, and asks about each,
at most ``query_rate`` a second:

- a final message_state (DELIVERED, UNDELIVERABLE, EXPIRED, DELETED, REJECTED) is recorded as its
  receipt would have been (``error`` says ``query_sm: UNDELIV err:005``); it is not asked again;
- ENROUTE, ACCEPTED, UNKNOWN, or no answer (ESME_RQUERYFAIL, a generic_nack, a timeout, no bind)
  change nothing: the message keeps its status and is asked again after another ``query_after``,
  ``query_attempts`` times in all, then forgotten;
- what is older than the receipt window is forgotten unasked (its provider id is gone too).

A message is taken for a query by ZREM (whoever removed it asks), so two processes never ask
about the same message in one round even while bind 0 moves between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from engine.core import idmaps, keys
from gateways.base import Host, Receipt
from gateways.receipts import apply_receipt, lookup_keys, shard_of
from gateways.smpp import dlr, pdu
from gateways.smpp.pdu import Address, Pdu

log = logging.getLogger(__name__)

FINAL = ("delivered", "failed", "expired", "rejected")
#: Sends a query_sm built by the callable on a bound session; its response.
Requester = Callable[[Callable[[int], bytes]], Awaitable[Pdu]]


@dataclass(frozen=True)
class QuerySettings:
    after: float
    interval: float
    batch: int
    rate: float
    attempts: int
    #: How long a provider id is kept for its receipt (the connector's receipt_window).
    window: float


class OverdueQueries:
    """One connector's overdue-receipt queries (started by the gateway with ``query_after``)."""

    def __init__(
        self, rt: Host, gateway: str, s: QuerySettings, request: Requester, leader: Callable[[], bool]
    ) -> None:
        self.rt, self.gateway, self.s = rt, gateway, s
        self.request, self.leader = request, leader
        self.zset, self.info = keys.smpp_awaiting(gateway), keys.smpp_awaiting_info(gateway)
        self._task: asyncio.Task[None] | None = None

    async def track(self, provider_id: str, source: Address) -> None:
        """Note a message just sent (before its send is recorded: a receipt may come at once)."""
        now = self.rt.clock.now_ms()
        try:
            async with self.rt.store.redis.pipeline(transaction=True) as pipe:
                pipe.zadd(self.zset, {provider_id: now})
                pipe.hset(self.info, provider_id, f"0|{source.ton}|{source.npi}|{source.addr}")
                await pipe.execute()
        except (aioredis.RedisError, OSError) as exc:
            log.warning("smpp %s: %s not noted for query_sm (%s)", self.gateway, provider_id, exc)

    async def settled(self, provider_id: str) -> None:
        """Its final receipt came: nothing to ask about."""
        async with self.rt.store.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.zset, provider_id)
            pipe.hdel(self.info, provider_id)
            await pipe.execute()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"smpp {self.gateway} query_sm")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.s.interval)
            if not self.leader():
                continue
            try:
                await self.run_once()
            except (aioredis.RedisError, OSError) as exc:
                log.warning("smpp %s: query_sm round skipped: %s", self.gateway, exc)
            except Exception:  # a bug: log it, keep the loop
                log.exception("smpp %s: query_sm round failed", self.gateway)

    async def run_once(self) -> int:
        """One round; how many messages were asked about."""
        r, now = self.rt.store.redis, self.rt.clock.now_ms()
        stale = await r.zrangebyscore(self.zset, "-inf", now - int(self.s.window * 1000))
        if stale:
            async with r.pipeline(transaction=True) as pipe:
                pipe.zrem(self.zset, *stale)
                pipe.hdel(self.info, *stale)
                await pipe.execute()
        due: Any = await r.zrangebyscore(
            self.zset, "-inf", now - int(self.s.after * 1000), start=0, num=self.s.batch
        )
        asked = 0
        for raw in due:
            if not await r.zrem(self.zset, raw):
                continue  # another process took it
            if await self._ask(raw.decode(), paced=asked > 0):
                asked += 1
        return asked

    async def _ask(self, pid: str, *, paced: bool) -> bool:
        """Ask about ``pid`` (after the rate's gap when ``paced``); False when it needed no asking."""
        r = self.rt.store.redis
        info: Any = await r.hget(self.info, pid)
        if info is None:
            return False  # settled meanwhile
        n, ton, npi, addr = info.decode().split("|", 3)
        if await self._finished(pid):  # its receipt came while its send was being recorded
            await r.hdel(self.info, pid)
            return False
        if paced:
            await asyncio.sleep(1.0 / self.s.rate)
        source = Address(addr, int(ton), int(npi))
        status, error = await self._query(pid, source)
        if status in FINAL:
            await r.hdel(self.info, pid)
            await apply_receipt(self.rt, self.gateway, Receipt(pid, status, error))
            log.info("smpp %s: query_sm %s: %s", self.gateway, pid, error)
            return True
        if int(n) + 1 >= self.s.attempts:
            await r.hdel(self.info, pid)
            log.info(
                "smpp %s: query_sm %s: %s; not asked again (%d queries)", self.gateway, pid, error, int(n) + 1
            )
            return True
        async with r.pipeline(transaction=True) as pipe:  # asked again after another query_after
            pipe.hset(self.info, pid, f"{int(n) + 1}|{ton}|{npi}|{addr}")
            pipe.zadd(self.zset, {pid: self.rt.clock.now_ms()})
            await pipe.execute()
        log.debug("smpp %s: query_sm %s: %s; keeps its status", self.gateway, pid, error)
        return True

    async def _finished(self, pid: str) -> bool:
        """Whether the message ``pid`` names already has a final status, or left the log (a
        receipt parked before its send was recorded is applied without :meth:`settled`)."""
        r, f = self.rt.store.redis, idmaps.field(pid)
        owner: Any = None
        for key in lookup_keys(self.rt, self.gateway, f):
            owner = await r.hget(key, f)
            if owner is not None:
                break
        if owner is None:
            return False  # not recorded yet, or its map is gone: ask
        contact, _, message_id = owner.decode().partition(" ")
        raw = await r.hget(keys.message_records(contact, shard_of(self.rt, contact)), message_id)
        return raw is None or orjson.loads(raw).get("status") in FINAL

    async def _query(self, pid: str, source: Address) -> tuple[str, str]:
        """(our status or "", what the SMSC said)."""
        try:
            resp = await self.request(lambda seq: pdu.query_sm(seq, pid, source))
        except Exception as exc:  # no bind, a timeout, the connection lost: no answer
            return "", f"no answer ({type(exc).__name__}: {exc})"
        if resp.command_id != pdu.QUERY_SM_RESP or resp.status != pdu.ESME_ROK:
            return "", f"{resp.name} {pdu.status_name(resp.status)}"
        try:
            answer = pdu.parse_query_sm_resp(resp)
        except pdu.MalformedPdu as exc:
            return "", str(exc)
        stat = dlr.MESSAGE_STATE_TO_STAT.get(answer.message_state, f"state {answer.message_state}")
        status = dlr.STAT_TO_STATUS.get(stat) or ""
        return status, f"query_sm: {stat} err:{answer.error_code:03d}"
