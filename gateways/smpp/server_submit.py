"""What the server does with a submit_sm, data_sm or submit_multi: check it field by field, hold
the account to its throughput, put long messages' parts back together, and hand the message to
the engine (ports.SmppServerHost.submit: the gate, routing and connectors of POST /v1/messages).

The checks, in order, each with its own command_status:

    source address not one of the account's ``sources``       ESME_RINVSRCADR
    esm_class asking for anything but a plain message          ESME_RINVESMCLASS
    data_coding Parley cannot read as text                    ESME_RINVDCS (0x104, SMPP 5.0's)
    no destination, or submit_multi with none or over 254     ESME_RINVNUMDESTS
    a destination that is not a phone number                  ESME_RINVDSTADR
    schedule_delivery_time / validity_period malformed        ESME_RINVSCHED / ESME_RINVEXPIRY
    over the account's throughput (every process together)    ESME_RTHROTTLED
    the text longer than engine.max_segments SMS              ESME_RINVMSGLEN
    Redis cannot take it                                       ESME_RSYSERR

Long messages arrive in parts (a UDH in short_message, or the sar_* TLVs): they are put back
together per (account, source, destinations, reference, total) in Redis, so the parts may come
over different binds and processes, and the whole text is sent as one message (Parley's
connectors split it again for their carrier). Every part is answered at once with the same
message id (the whole message's, chosen at the first part), and its receipt names that id. Parts
whose others never come are forgotten after ``parts_ttl``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis

from engine.core import keys
from engine.core.config import SmppAccountConfig, SmppServerConfig
from engine.core.numbers import InvalidNumber, to_e164
from engine.core.ports import SmppServerHost, Submission
from engine.core.sms import encoding_of
from gateways.scripts.rate import RateArgs, RateReply
from gateways.smpp import pdu, text
from gateways.smpp.pdu import Address, Pdu
from gateways.smpp.server_pdu import (
    DATA_CODINGS,
    ESME_RINVDCS,
    ESME_RINVESMCLASS,
    ESME_RINVEXPIRY,
    ESME_RINVNUMDESTS,
    ESME_RINVSCHED,
    Submit,
    parse_submit,
    smpp_time,
)

#: A burst of up to one second's worth of the account's throughput is taken at once; beyond it
#: the submits' slots would be booked more than this far ahead, and are refused.
BURST_US = 1_000_000


class Refused(Exception):
    """The submit is answered with ``status`` (never ESME_ROK)."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass(frozen=True)
class Accepted:
    message_id: str
    #: How many messages were handed to the engine (0: a part, waiting for the others).
    sent: int


def _destination(dest: Address, region: str) -> str:
    addr = dest.addr.strip()
    if not addr:
        raise Refused(pdu.ESME_RINVDSTADR, "no destination address")
    number = "+" + addr if dest.ton == 1 and addr.isdigit() else addr
    try:
        return to_e164(number, region)
    except InvalidNumber as exc:
        raise Refused(pdu.ESME_RINVDSTADR, f"destination {addr!r}: {exc}") from None


class SubmitHandler:
    """One per server: checks and hands over the submits of every account's binds."""

    def __init__(self, host: SmppServerHost, config: SmppServerConfig) -> None:
        self.host = host
        self.config = config

    @property
    def redis(self) -> aioredis.Redis:
        return self.host.store.redis

    def check_source(self, account: SmppAccountConfig, source: Address) -> None:
        if account.sources and not any(fnmatch.fnmatchcase(source.addr, p) for p in account.sources):
            raise Refused(pdu.ESME_RINVSRCADR, f"source {source.addr!r} is not one of the account's")

    async def throttle(self, account: SmppAccountConfig, n: int = 1) -> None:
        """Book ``n`` submits of the account's rate (rate.lua, shared by every process)."""
        rate = account.throughput
        call = RateArgs(
            gateway=account.system_id, spacing_us=f"{1_000_000 / rate:.3f}", segments=n,
            max_ahead_us=BURST_US, window_us=1_000_000, cap=max(1, math.ceil(rate)), catch_up_us=0,
        )  # fmt: skip
        got = RateReply.parse(
            await self.host.store.run("rate", [keys.smpp_server_rate(account.system_id)], call.to_argv())
        )
        if not got.granted:
            raise Refused(pdu.ESME_RTHROTTLED, f"over {rate:g} submits/s")

    async def submit(self, account: SmppAccountConfig, p: Pdu) -> Accepted:
        """Check, throttle, reassemble and hand over one submit PDU (raises Refused)."""
        sm = parse_submit(p)  # MalformedPdu: the session answers a generic_nack
        self.check_source(account, sm.source)
        if sm.esm_class & 0x3C:
            raise Refused(ESME_RINVESMCLASS, f"esm_class 0x{sm.esm_class:02X} is not a plain message")
        if sm.data_coding not in DATA_CODINGS:
            raise Refused(ESME_RINVDCS, f"data_coding 0x{sm.data_coding:02X} is not one Parley reads")
        if not sm.dests or len(sm.dests) > 254:
            raise Refused(ESME_RINVNUMDESTS, f"{len(sm.dests)} destinations")
        region = self.host.config.numbers.default_region
        numbers = [_destination(d, region) for d in sm.dests]
        now = self.host.clock.now_ms()
        send_at, validity = self._times(sm, now)
        await self.throttle(account, len(numbers))
        concat, body = text.parse_udh(sm.esm_class, sm.data)
        if concat is None:
            concat = text.concat_from_tlvs(sm.tlv)
        content = text.decode_text(sm.data_coding, body, default=account.default_encoding)
        message_id = ""
        if concat is not None and concat.total > 1:
            whole, message_id = await self._part(account, sm, numbers, concat, content)
            if whole is None:
                return Accepted(message_id, 0)
            content = whole
        if encoding_of(content).segments > self.host.config.engine.max_segments:
            raise Refused(pdu.ESME_RINVMSGLEN, f"{len(content)} characters: over engine.max_segments SMS")
        smpp = {
            "a": account.system_id, "rd": sm.registered_delivery, "s": sm.source.addr, "st": sm.source.ton,
            "sn": sm.source.npi, "t": now, "x": content[:20],
        }  # fmt: skip
        first = message_id
        receipts = "final" if sm.registered_delivery & 3 else None  # the carrier's, for the ESME's
        for number in numbers:
            if send_at is not None:
                smpp["at"] = int(send_at.timestamp() * 1000)
            mid = await self.host.submit(
                Submission(to=number, text=content, smpp={**smpp, "rid": first} if first else smpp,
                           validity_s=validity, message_id=message_id or None, send_at=send_at,
                           priority=sm.priority or None, receipts=receipts,
                           sender=sm.source.addr if account.keep_source and sm.source.addr else None)
            )  # fmt: skip
            first = first or mid
            message_id = ""
        return Accepted(first, len(numbers))

    def _times(self, sm: Submit, now_ms: int) -> tuple[datetime | None, float | None]:
        now = datetime.fromtimestamp(now_ms / 1000, UTC)
        send_at = validity = None
        if sm.schedule:
            try:
                send_at = smpp_time(sm.schedule, now)
            except ValueError as exc:
                raise Refused(ESME_RINVSCHED, str(exc)) from None
        if sm.validity:
            try:
                until = smpp_time(sm.validity, now)
            except ValueError as exc:
                raise Refused(ESME_RINVEXPIRY, str(exc)) from None
            validity = (until - (send_at or now)).total_seconds()
            if validity <= 0:
                raise Refused(ESME_RINVEXPIRY, f"validity_period {sm.validity} is over before it is due")
        return send_at, validity

    async def _part(
        self, account: SmppAccountConfig, sm: Submit, numbers: list[str], concat: text.Concat, content: str
    ) -> tuple[str | None, str]:
        """Keep one part; (the whole text once every part is in, else None; the message id)."""
        what = f"{sm.source.addr}|{','.join(numbers)}|{concat.ref}|{concat.total}"
        key = keys.smpp_server_parts(
            account.system_id, hashlib.blake2b(what.encode(), digest_size=10).hexdigest()
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "id", self.host.new_message_id(numbers[0]))
            pipe.hset(key, str(concat.seq), content)
            pipe.expire(key, int(self.config.parts_ttl))
            pipe.hgetall(key)
            *_, got = await pipe.execute()
        parts = {k.decode(): v.decode() for k, v in got.items()}
        mid = parts.pop("id")
        if len(parts) < concat.total:
            return None, mid
        await self.redis.delete(key)
        return "".join(parts[str(i)] for i in sorted(int(k) for k in parts)), mid
