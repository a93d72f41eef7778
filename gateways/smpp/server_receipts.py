"""Receipts for ESMEs bound into Parley: from a message's final status to its account's queue.

A message an ESME submitted carries ``smpp`` (its account ``a``, registered_delivery ``rd``, the
source it used ``s``/``st``/``sn``, when it was submitted ``t``, its first characters ``x``, and
``rid`` when its receipt names another id: a submit_multi's). Its record keeps it, and so do its
``message`` outcome events on its shard's ``p:fx:T`` (status.lua, commit.lua, the single turn).

Every smpp-server process reads every shard's outcome stream in one consumer group
(``smpp-server``), so each event is handled by one of them: an event of an ESME's message that
reached a final status its registered_delivery asked for is queued (smpps_push.lua, once per
message and status) for the account's binds (gateways/smpp/server_queue.py), then acknowledged.
A process that dies holding events leaves them pending; the others claim them once idle for
``redeliver_after`` (at least once: the queue's once-only key drops the repeat). The group
starts at the end of each stream: a message submitted before any smpp-server ran has no ESME.

registered_delivery (bits 0-1): 0 no receipt, 1 a receipt for every final status, 2 only for a
failure (not delivered), 3 (reserved) as 1.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from typing import Any

import orjson
from redis.exceptions import ResponseError

from engine.core import keys
from engine.core.config import SmppAccountConfig
from engine.core.consumer import Entry, StreamConsumer, claim_pending
from engine.core.ports import Services
from gateways.smpp import server_queue
from gateways.smpp.server_pdu import RECEIPT_STATES

log = logging.getLogger(__name__)

GROUP = "smpp-server"


def wanted(rd: int, status: str) -> bool:
    """Whether registered_delivery ``rd`` asks for a receipt of final status ``status``."""
    level = rd & 0x03
    if status not in RECEIPT_STATES or level == 0:
        return False
    return status != "delivered" if level == 2 else True


def receipt_fields(event: dict[str, Any], smpp: dict[str, Any]) -> dict[str, str]:
    """The queue entry of one receipt (server_session turns it into the deliver_sm)."""
    contact = str(event.get("c", ""))
    return {
        "k": "r", "id": str(smpp.get("rid") or event["m"]), "st": str(event["status"]),
        "src": contact.removeprefix("+"), "dst": str(smpp.get("s", "")), "dton": str(smpp.get("st", 0)),
        "dnpi": str(smpp.get("sn", 0)), "sub": str(smpp.get("t", event.get("at", 0))),
        "done": str(event.get("at", 0)), "x": str(smpp.get("x", "")),
    }  # fmt: skip


class ReceiptRouter(StreamConsumer):
    """``async with ReceiptRouter(rt, accounts, redeliver_after):`` (module docstring)."""

    label = "smpp-server receipts"

    def __init__(
        self, rt: Services, accounts: dict[str, SmppAccountConfig], redeliver_after_s: float
    ) -> None:
        shards = rt.config.engine.shards
        me = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        super().__init__(rt.store.redis, GROUP, me, [keys.flow_events(s) for s in range(shards)])
        self.rt = rt
        self.accounts = accounts
        self.redeliver_ms = int(redeliver_after_s * 1000)
        self.queued = 0

    async def _ensure_groups(self) -> None:
        for stream in self.streams:
            try:  # a new group starts at the end (see the module docstring)
                await self.redis.xgroup_create(stream, self.group, id="$", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            await claim_pending(self.redis, stream, self.group, self.consumer, self.redeliver_ms)

    async def handle(self, entries: list[Entry], recovering: bool) -> bool:
        done: dict[str, list[bytes]] = {}
        for stream, entry_id, fields in entries:
            await self._one(fields)
            done.setdefault(stream, []).append(entry_id)
        if done:
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream, ids in done.items():
                    pipe.xack(stream, self.group, *ids)
                await pipe.execute()
        return False

    async def _one(self, fields: dict[bytes, bytes]) -> None:
        raw = fields.get(b"e")
        if raw is None or b'"smpp"' not in raw:  # cheap: most events are not an ESME's
            return
        event = orjson.loads(raw)
        smpp = event.get("smpp")
        if event.get("t") != "message" or not isinstance(smpp, dict):
            return
        account = self.accounts.get(str(smpp.get("a", "")))
        status = str(event.get("status", ""))
        if account is None or not wanted(int(smpp.get("rd", 0)), status):
            return
        entry = receipt_fields(event, smpp)
        fresh, _ = await server_queue.push(self.rt, account, f"r|{event['m']}|{status}", entry)
        if fresh:
            self.queued += 1
