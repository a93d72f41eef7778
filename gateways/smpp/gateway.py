"""``type: smpp``: an SMPP 3.4 ESME connector (binds to a carrier's or aggregator's SMSC).

Sending (:meth:`SmppGateway.send`, called by the send pipeline, which already paced the message
at the connector's ``rate`` in segments): the text is encoded (GSM-7 when every character
fits, else UCS-2) and split by ``concat`` (UDH with an 8- or 16-bit reference, SAR TLVs, or one
``message_payload``); each part is a submit_sm on the bound session with the fewest requests
outstanding, within its ``window``. The first part's SMSC id is the message's provider id.

Answers, per part:
- ESME_ROK: the part is taken; the next one goes.
- ESME_RTHROTTLED / ESME_RMSGQFUL: the whole connector pauses (``throttle_backoff``, doubling
  while throttles continue, up to ``throttle_backoff_max``) and the part is sent again after it,
  up to ``throttle_retries`` times; then the pipeline is told it is a rate signal
  (``GatewayThrottled`` with the pause: the connector waits, the circuit breaker does not count
  it; a message with parts already taken stays on this connector). ESME_RSYSERR /
  ESME_RX_T_APPN likewise without the pause, and those count as failures.
- any other status (ESME_RINVDSTADR...), or a generic_nack: that message fails with the status
  named; the bind carries on.
- no answer within ``response_timeout``, or the connection lost after the write: the SMSC may
  have the part, so the pipeline retries it *on this connector* (never failed over). The parts
  already taken are remembered by message id and not sent again: a retry resumes at the part
  that was not answered, with the same concatenation reference.

Receiving (``deliver_sm`` on a transceiver or receiver bind), answered only after Redis has it:
- a text (SMS-MO): decoded tolerantly (an unknown data coding is decoded as best it can be,
  never refused); a multipart text's parts are kept in Redis by (source, destination,
  reference, total) for ``mo_part_ttl`` and the whole text is taken when the last part arrives,
  in part order, whatever order they came in;
- a delivery receipt (esm_class 0x04 or 0x20): the id from ``receipted_message_id`` or the text,
  tried in its hex and decimal forms; a receipt for a part of a multipart message is rolled up
  (delivered when every part is; failed, expired or rejected as soon as one part is); a receipt
  that comes before its submit_sm_resp is parked and applied when the send is recorded.

A deliver_sm that cannot be stored (Redis away), or whose text the replicas did not confirm in
time (``redis.wait_replicas``), is answered ESME_RX_T_APPN, so the SMSC delivers it again later;
nothing is acknowledged before it is durable. The redelivery usually comes with a new sequence
number, so a text refused for want of replicas may be taken twice (at least once, never lost).

Over 500 lines on purpose: the connector is one state machine over its binds (which session a
part goes on, what a throttle or a lost resp does to the parts already taken, how a receipt
finds its parts); the wire (pdu.py), the texts (text.py), the sessions (session.py) and the
receipt ids (dlr.py) are already their own modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from engine.core import idmaps, keys
from engine.core.config import Duration
from engine.core.errors import (
    ConfigError,
    GatewayRejected,
    GatewayThrottled,
    GatewayTimeout,
    GatewayUnavailable,
    NotReplicated,
)
from engine.core.numbers import InvalidNumber, mask, to_e164
from engine.core.sendopts import PRIORITIES, RECEIPT_LEVELS, SendOptions
from gateways.base import Gateway, Host, OutboundMessage, Receipt, SendPolicy, SendResult
from gateways.receipts import PARK_TTL_S, apply_receipt, lookup_keys, parked_key, record_receipt, shard_of
from gateways.scripts.smpp_parts import Part, SmppPartsArgs, parse_rollup
from gateways.scripts.smpp_receipt import SmppReceiptArgs, SmppReceiptFound
from gateways.smpp import dlr, outbind, pdu, smpptime, text, tls
from gateways.smpp.binds import BindLeases
from gateways.smpp.pdu import Address, Pdu, ShortMessage
from gateways.smpp.query import OverdueQueries, QuerySettings
from gateways.smpp.session import ConnectionLost, Session, SessionSettings

log = logging.getLogger(__name__)

THROTTLES = frozenset({pdu.ESME_RTHROTTLED, pdu.ESME_RMSGQFUL})
TRANSIENT = THROTTLES | {pdu.ESME_RSYSERR, pdu.ESME_RX_T_APPN}
#: esm_class message types that are receipts: SMSC delivery receipt, intermediate notification.
RECEIPT_TYPES = frozenset({0x04, 0x20})
INTERMEDIATE = 0x20
FINAL_FAILURES = ("failed", "expired", "rejected")
FINAL_STATUSES = ("delivered", *FINAL_FAILURES)
#: The sessions of one bind by ``bind``: ``transmitter`` sends only (texts and receipts come
#: over the SMSC's outbind, or not at all).
BIND_MODES = {
    "transceiver": ["transceiver"],
    "split": ["transmitter", "receiver"],
    "transmitter": ["transmitter"],
}
#: Partly sent messages remembered for their retry (beyond: a retry sends every part again).
MAX_PROGRESS = 10_000


@dataclass(frozen=True)
class SmppConfig:
    #: The SMSC's address.
    host: str
    system_id: str
    password: str
    port: int = 2775
    system_type: str = ""
    #: ``transceiver`` (one bind sends and receives) or ``split`` (a transmitter and a receiver).
    bind: str = "transceiver"
    #: Binds (or transmitter/receiver pairs with ``split``) kept open at once.
    binds: int = 1
    #: submit_sm outstanding per bind (waiting for submit_sm_resp).
    window: int = 10
    #: Our source address: a number, a short code or an alphanumeric sender id.
    sender: str = ""
    #: Source TON/NPI; -1: from ``sender`` (alphanumeric 5/0, ``+`` number 1/1, short code 3/0).
    source_ton: int = -1
    source_npi: int = -1
    #: address_range in the bind (which numbers' texts this bind receives; SMSC-specific).
    address_range: str = ""
    service_type: str = ""
    #: How long texts are split: ``udh8``, ``udh16``, ``sar`` or ``payload`` (one message_payload).
    concat: str = "udh8"
    #: Delivery receipts to ask for (registered_delivery): ``final`` (delivered or failed; also
    #: ``true``), ``failure`` (only failures), ``intermediate`` (final ones and intermediate
    #: notifications) or ``none`` (also ``false``). A message's own ``receipts`` wins.
    registered_delivery: bool | str = True
    #: Default validity_period (0: the SMSC's); a message's own validity wins.
    validity_period: Duration = Duration(0.0)
    #: Default priority_flag, 0..3; a message's own priority wins.
    priority: int = 0
    #: How validity_period and schedule_delivery_time are written: ``relative`` (an interval
    #: from the submit: no clock to agree on) or ``absolute`` (UTC).
    time_format: str = "relative"
    #: query_sm for a message whose final receipt has not come this long after it was sent
    #: (0: never); every ``query_interval``, at most ``query_batch`` a round and ``query_rate`` a
    #: second, each message ``query_attempts`` times at most (gateways/smpp/query.py).
    query_after: Duration = Duration(0.0)
    query_interval: Duration = Duration(60.0)
    query_batch: int = 100
    query_rate: float = 10.0
    query_attempts: int = 3
    #: Listen here (``host:port``) for the SMSC's outbind, then bind_receiver over its
    #: connection (gateways/smpp/outbind.py); its outbind must name ``outbind_system_id`` and
    #: ``outbind_password`` (empty: ``system_id`` and ``password``). "" (default): no outbind.
    outbind_listen: str = ""
    outbind_system_id: str = ""
    outbind_password: str = ""
    #: How a receipt's id relates to the submit_sm_resp's (Kannel's msg-id-type): ``same`` (the
    #: very same string), ``hex_to_dec`` (the receipt gives in hex what the response gave in
    #: decimal) or ``dec_to_hex`` (the reverse). Never guessed: a guess matches other messages.
    receipt_id_format: str = "same"
    #: What data_coding 0 (the SMSC default alphabet) means for texts we receive.
    default_encoding: str = "gsm0338"
    #: enquire_link after this long without any PDU from the SMSC.
    enquire_link: Duration = Duration(30.0)
    #: Longest wait for any response (submit_sm_resp, bind_resp, enquire_link_resp).
    response_timeout: Duration = Duration(10.0)
    connect_timeout: Duration = Duration(5.0)
    #: Reconnect back-off: doubles per failure in a row up to ``reconnect_max``, with jitter; a
    #: bind the SMSC answered traffic on starts it again from the first step.
    reconnect_delay: Duration = Duration(1.0)
    reconnect_max: Duration = Duration(60.0)
    #: After a refused bind (bad password, unknown system id): wait this long, not a hot loop.
    bind_retry: Duration = Duration(60.0)
    #: Pause of the whole connector after ESME_RTHROTTLED / ESME_RMSGQFUL; doubles while they go on.
    throttle_backoff: Duration = Duration(1.0)
    throttle_backoff_max: Duration = Duration(30.0)
    #: Times one part is sent again after throttling before its message is left to the pipeline.
    throttle_retries: int = 10
    #: How long the parts of a multipart text wait for the rest.
    mo_part_ttl: Duration = Duration(3600.0)
    #: Longest PDU read (command_length above it drops the connection).
    max_pdu: int = 65536
    #: How long a process's lease on a bind lasts (renewed every third of it). The bind count
    #: is global: every process running the connector shares ``binds`` (gateways/smpp/binds.py).
    bind_lease: Duration = Duration(10.0)
    #: TLS to the SMSC (its TLS port; often 3550 or 8775). The certificate is verified against
    #: ``tls_ca`` (a PEM file; empty: the system's trusted CAs) and must be for ``tls_server_name``
    #: (empty: ``host``) unless ``tls_verify_hostname`` is off; ``tls_verify: false`` trusts any
    #: certificate (a test SMSC only). ``tls_cert``/``tls_key``: a client certificate (PEM) for
    #: an SMSC that asks for one.
    tls: bool = False
    tls_ca: str = ""
    tls_verify: bool = True
    tls_verify_hostname: bool = True
    tls_server_name: str = ""
    tls_cert: str = ""
    tls_key: str = ""


class SmppGateway(Gateway):
    Config = SmppConfig
    config: SmppConfig
    paces_parts = True

    @classmethod
    def send_timeout(cls, config: SmppConfig) -> float:
        return float(config.response_timeout)  # per part: submit_sm_resp

    def __init__(self, name: str, config: SmppConfig, policy: SendPolicy | None = None) -> None:
        super().__init__(name, config, policy)
        self.rt: Host | None = None
        self.active = False
        self._binds: dict[int, list[Session]] = {}
        self.leases: BindLeases | None = None
        self._settings: SessionSettings | None = None
        self._ref = random.randrange(0x10000)
        self._pause_until = 0.0
        self._throttles = 0
        #: Parts already taken of messages whose send is being retried: msg id -> (ref, ids),
        #: oldest first; bounded (a message the pipeline gave up on is not retried here again).
        self._progress: OrderedDict[str, tuple[int, list[str]]] = OrderedDict()
        self._conn_token = secrets.token_hex(4)
        #: query_sm for overdue receipts (``query_after``), in a process that sends.
        self.queries: OverdueQueries | None = None
        #: The SMSC's outbind connections (``outbind_listen``), in a process that sends.
        self.outbind: outbind.OutbindListener | None = None
        c = config
        self._source = _address(c.sender, *_source_ton_npi(c))

    @classmethod
    def check(cls, name: str, config: SmppConfig) -> None:
        where = f"gateways.{name}"
        if not config.host:
            raise ConfigError(f"{where}.host", "must not be empty")
        if not 0 < config.port < 65536:
            raise ConfigError(f"{where}.port", f"must be 1..65535, got {config.port}")
        for key, limit in (("system_id", 15), ("password", 8), ("system_type", 12), ("service_type", 5)):
            value = getattr(config, key)
            if len(value) > limit:
                raise ConfigError(
                    f"{where}.{key}", f"at most {limit} characters (SMPP 3.4), got {len(value)}"
                )
            if not value.isascii():
                raise ConfigError(f"{where}.{key}", "must be ASCII")
        if not config.system_id:
            raise ConfigError(f"{where}.system_id", "must not be empty")
        if config.bind not in BIND_MODES:
            raise ConfigError(
                f"{where}.bind", f"must be transceiver, split or transmitter, got {config.bind!r}"
            )
        if config.outbind_listen:
            outbind.parse_listen(where, config.outbind_listen)
        for key, limit in (("outbind_system_id", 15), ("outbind_password", 8)):
            if len(getattr(config, key)) > limit:
                raise ConfigError(f"{where}.{key}", f"at most {limit} characters (SMPP 3.4)")
        if config.concat not in text.CONCAT_MODES:
            raise ConfigError(
                f"{where}.concat", f"must be one of {', '.join(text.CONCAT_MODES)}, got {config.concat!r}"
            )
        if config.receipt_id_format not in dlr.ID_FORMATS:
            raise ConfigError(
                f"{where}.receipt_id_format",
                f"must be one of {', '.join(dlr.ID_FORMATS)} (how a receipt's id relates to the "
                f"submit_sm_resp's), got {config.receipt_id_format!r}",
            )
        if config.default_encoding not in text.DEFAULT_CODINGS:
            raise ConfigError(
                f"{where}.default_encoding",
                f"must be one of {', '.join(text.DEFAULT_CODINGS)}, got {config.default_encoding!r}",
            )
        for key in ("binds", "window", "throttle_retries", "query_batch", "query_attempts"):
            if getattr(config, key) < 1:
                raise ConfigError(f"{where}.{key}", f"must be at least 1, got {getattr(config, key)}")
        if config.bind_lease < 0.3:
            raise ConfigError(f"{where}.bind_lease", f"must be at least 300ms, got {config.bind_lease}s")
        if config.max_pdu < 1024:
            raise ConfigError(f"{where}.max_pdu", f"must be at least 1024, got {config.max_pdu}")
        if len(config.sender) > 20:
            raise ConfigError(f"{where}.sender", "at most 20 characters")
        tls.client_context(where, _tls_options(config))  # files readable, the key fits its cert
        receipt_level(config.registered_delivery, f"{where}.registered_delivery")
        if config.query_after < 0 or config.query_interval < 0.01 or config.query_rate <= 0:
            raise ConfigError(
                f"{where}.query_after",
                "query_after must be 0 (off) or more, query_interval at least 10ms, query_rate more than 0",
            )
        if config.priority not in PRIORITIES:
            raise ConfigError(f"{where}.priority", f"must be 0..3 (priority_flag), got {config.priority}")
        if config.time_format not in ("relative", "absolute"):
            raise ConfigError(
                f"{where}.time_format", f"must be relative or absolute, got {config.time_format!r}"
            )
        if not 0 <= config.validity_period <= smpptime.MAX_RELATIVE_S:
            raise ConfigError(
                f"{where}.validity_period",
                f"must be 0 (the SMSC's) up to 99 days, got {config.validity_period}s",
            )

    # Lifecycle ------------------------------------------------------------------------------

    def attach(self, rt: Host, *, active: bool) -> None:
        self.rt = rt
        self.active = active

    async def __aenter__(self) -> SmppGateway:
        if not self.active:
            return self  # a worker process: it neither sends nor binds
        c = self.config
        self._settings = SessionSettings(
            host=c.host, port=c.port, system_id=c.system_id, password=c.password, system_type=c.system_type,
            address_range=c.address_range, window=c.window, enquire_link=c.enquire_link,
            response_timeout=c.response_timeout, connect_timeout=c.connect_timeout,
            reconnect_delay=c.reconnect_delay, reconnect_max=c.reconnect_max, bind_retry=c.bind_retry,
            max_pdu=c.max_pdu, tls_context=tls.client_context(f"gateways.{self.name}", _tls_options(c)),
            server_name=c.tls_server_name,
        )  # fmt: skip
        rt = self._runtime()
        self.leases = BindLeases(
            rt.store, self.name, c.binds, c.bind_lease, self._open_bind, self._close_bind, rt.clock
        )
        await self.leases.start()
        if c.outbind_listen:
            self.outbind = outbind.OutbindListener(
                self.name, outbind.parse_listen(f"gateways.{self.name}", c.outbind_listen),
                (c.outbind_system_id or c.system_id, c.outbind_password or c.password), self._settings,
                self._on_deliver, self._bound_changed, rt.clock,
            )  # fmt: skip
            await self.outbind.start()
        if c.query_after > 0:
            settings = QuerySettings(
                after=c.query_after, interval=c.query_interval, batch=c.query_batch, rate=c.query_rate,
                attempts=c.query_attempts, window=self.policy.receipt_window,
            )  # fmt: skip
            self.queries = OverdueQueries(rt, self.name, settings, self._request, lambda: 0 in self._binds)
            self.queries.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.queries is not None:
            await self.queries.stop()
        if self.outbind is not None:
            await self.outbind.stop()
        if self.leases is not None:
            await self.leases.stop()

    async def _request(self, build: Callable[[int], bytes]) -> Pdu:
        """A request (query_sm) on the bound submitting session with the fewest in hand."""
        return await (await self._session()).request(build)

    def _open_bind(self, index: int) -> None:
        """Start the session(s) of bind ``index`` (this process holds its lease)."""
        assert self._settings is not None
        modes = BIND_MODES[self.config.bind]
        clock = self.rt.clock if self.rt is not None else None  # the back-off waits on it
        settings, name = self._settings, self.name
        sessions = [
            Session(f"{name}/{index}:{mode}", mode, settings, self._on_deliver, self._bound_changed, clock)
            for mode in modes
        ]
        self._binds[index] = sessions
        for s in sessions:
            s.start()

    async def _close_bind(self, index: int, timeout: float) -> None:
        """Unbind and stop the session(s) of bind ``index`` (before its lease is given up)."""
        sessions = self._binds.pop(index, [])
        await asyncio.gather(*(s.close(timeout) for s in sessions), return_exceptions=True)
        self._bound_changed()

    @property
    def sessions(self) -> list[Session]:
        """The sessions open in this process, by bind index (those of the indexes it holds)."""
        return [s for i in sorted(self._binds) for s in self._binds[i]]

    def sendable(self) -> bool:
        return self.leases is not None and self.leases.holding.is_set()

    async def wait_sendable(self, timeout: float) -> bool:
        """True once this process holds a bind lease (False after ``timeout``): a process holding
        none takes no messages, and other processes, holding the binds, send them."""
        if self.leases is None:
            return False
        if not self.leases.holding.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.leases.holding.wait(), timeout)
        return self.leases.holding.is_set()

    @property
    def concurrency(self) -> int:
        """The windows decide how many submits are in flight, not the pipeline's ``concurrency``."""
        senders = sum(1 for s in self.sessions if s.can_submit) or self.config.binds
        return senders * self.config.window

    def segments(self, body: str) -> int:
        """As the configured concatenation splits it (udh16 leaves one septet less per part)."""
        return text.segments_cost(body, self.config.concat)

    def health(self) -> dict[str, Any]:
        leases = self.leases
        return {"binds": {s.name: s.health() for s in self.sessions},
                "bound": sum(1 for s in self.sessions if s.bound.is_set()),
                "bind_leases": {"held": sorted(self._binds), "share": leases.share if leases else 0,
                                "of": self.config.binds},
                **({"outbind": self.outbind.health()} if self.outbind is not None else {})}  # fmt: skip

    # Sending --------------------------------------------------------------------------------

    async def _session(self) -> Session:
        """The bound submitting session with the fewest requests in hand (written or waiting for
        its window: counting only those written would pile callers onto the first bind);
        waits a while for one to be bound."""
        deadline = time.monotonic() + self.config.response_timeout
        while True:
            ready = [s for s in self.sessions if s.can_submit and s.bound.is_set()]
            if ready:
                return min(ready, key=lambda s: s.load)
            left = deadline - time.monotonic()
            if left <= 0:
                why = "; ".join(f"{s.name} {s.state}: {s.last_error}" for s in self.sessions if s.can_submit)
                raise GatewayUnavailable(
                    self.name, f"no bind is up ({why or 'this process holds no bind lease'})", ambiguous=False
                )
            if self.leases is None:
                raise GatewayUnavailable(self.name, "not started in this process", ambiguous=False)
            waits: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(s.bound.wait()) for s in self.sessions if s.can_submit
            ]
            # Binds come and go with their leases: look again at least every quarter second.
            waits.append(asyncio.ensure_future(asyncio.sleep(min(left, 0.25))))
            _, pending = await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            for w in pending:
                w.cancel()

    async def _pause(self) -> None:
        left = self._pause_until - time.monotonic()
        if left > 0:
            await asyncio.sleep(left)

    def _throttled(self) -> float:
        """Pause the connector after a throttle reply; returns how long the pause lasts.

        Only a throttle that arrives after the current pause ended escalates it: the replies to
        submits that were already in flight when the SMSC started throttling belong to the same
        episode (otherwise a full window of throttles would double the pause ``window`` times
        and stall the connector for minutes)."""
        c = self.config
        now = time.monotonic()
        if now < self._pause_until:
            return self._pause_until - now
        step = float(min(c.throttle_backoff_max, c.throttle_backoff * 2.0 ** min(self._throttles, 16)))
        self._throttles += 1
        self._pause_until = now + step
        return step

    def _next_ref(self) -> int:
        self._ref = (self._ref + 1) & 0xFFFF
        return self._ref

    async def send(self, msg: OutboundMessage, timeout: float | None = None) -> SendResult:
        ref, ids = self._progress.pop(msg.id, (self._next_ref(), []))
        segments = text.encode_message(msg.text, concat=self.config.concat, ref=ref)
        dest = Address(msg.to.removeprefix("+"), 1, 1)
        if msg.sender in ("", self.config.sender):
            source = self._source  # with the configured source_ton / source_npi
        else:
            source = _address(msg.sender, *_source_ton_npi(self.config, msg.sender))
        fields = self._delivery_fields(msg.options)
        try:
            first = len(ids)  # a retry resumes after the parts already taken
            for i in range(first, len(segments)):
                seg = segments[i]
                if i > first and msg.pace is not None:
                    await msg.pace()  # each part is its own event on the wire: its own rate slot
                sm = ShortMessage(
                    source=source, dest=dest, short_message=seg.short_message, data_coding=seg.data_coding,
                    esm_class=seg.esm_class, service_type=self.config.service_type, tlvs=seg.tlvs, **fields,
                )  # fmt: skip
                ids.append(await self._submit(sm, i, len(segments), taken=bool(ids), timeout=timeout))
        except (GatewayTimeout, GatewayUnavailable) as exc:
            if exc.ambiguous or ids:
                self._progress[msg.id] = (ref, ids)  # the retry resumes after the parts taken
                while len(self._progress) > MAX_PROGRESS:
                    self._progress.popitem(last=False)
            raise
        if len(ids) > 1:
            await self._record_parts(ids)
        if self.queries is not None and fields["registered_delivery"]:
            await self.queries.track(ids[0], source)
        return SendResult(ids[0])

    def _delivery_fields(self, o: SendOptions) -> dict[str, Any]:
        """registered_delivery, priority_flag, validity_period and schedule_delivery_time of a
        message's submit_sm: its own options, else the connector's defaults. The validity is what
        is left of the message's at this moment (the SMSC stops trying when Parley would have);
        a due time still ahead (a message handed over early) becomes schedule_delivery_time."""
        c, now = self.config, self._runtime().clock.now_ms()
        level = o.receipts or receipt_level(c.registered_delivery)
        validity = ""
        if o.expires_ms:
            validity = smpptime.encode_ms(o.expires_ms, now, c.time_format)
        elif c.validity_period > 0:
            validity = smpptime.encode_ms(now + int(c.validity_period * 1000), now, c.time_format)
        schedule = (
            smpptime.encode_ms(o.deliver_at_ms, now, c.time_format) if o.deliver_at_ms > now + 1000 else ""
        )
        return {
            "registered_delivery": REGISTERED_DELIVERY[level],
            "priority_flag": c.priority if o.priority is None else o.priority,
            "validity_period": validity, "schedule_delivery_time": schedule,
        }  # fmt: skip

    async def _submit(self, sm: ShortMessage, i: int, n: int, *, taken: bool, timeout: float | None) -> str:
        """One part; returns the SMSC's id for it (lower case). ``timeout`` (a circuit probe's)
        bounds the wait for the response, not the throttle pause before the write."""
        part = f"part {i + 1}/{n}" if n > 1 else "submit_sm"
        attempts = 0
        while True:
            await self._pause()
            session = await self._session()
            try:
                request = session.request(lambda seq: pdu.encode_sm(pdu.SUBMIT_SM, seq, sm))
                resp = await (request if timeout is None else asyncio.wait_for(request, timeout))
            except TimeoutError:
                self._metric("timeout")
                limit = (
                    self.config.response_timeout
                    if timeout is None
                    else min(timeout, self.config.response_timeout)
                )
                raise GatewayTimeout(self.name, f"{part}: no submit_sm_resp within {limit:g}s") from None
            except ConnectionLost as exc:
                self._metric("connection_lost")
                raise GatewayUnavailable(
                    self.name, f"{part}: {exc}", ambiguous=exc.written or taken
                ) from None  # fmt: skip
            self._metric(
                pdu.status_name(resp.status) if resp.command_id != pdu.GENERIC_NACK else "generic_nack"
            )
            if resp.status == pdu.ESME_ROK and resp.command_id == pdu.SUBMIT_SM_RESP:
                self._throttles = 0
                return dlr.sent_id(pdu.parse_message_id(resp), self.config.receipt_id_format)
            name = pdu.status_name(resp.status)
            if resp.status in TRANSIENT and resp.command_id != pdu.GENERIC_NACK:
                attempts += 1
                wait = self._throttled() if resp.status in THROTTLES else self.config.throttle_backoff
                if attempts > self.config.throttle_retries:
                    if resp.status in THROTTLES:
                        # A rate signal, not ill health: the pipeline pauses the connector for
                        # the pause this one is in, and the breaker does not count it.
                        raise GatewayThrottled(
                            self.name, f"{part}: {name} {attempts} times", status=name, retry_after=wait,
                            ambiguous=taken,
                        )  # fmt: skip
                    raise GatewayUnavailable(
                        self.name, f"{part}: {name} {attempts} times", status=name, ambiguous=taken
                    )  # fmt: skip
                log.info("smpp %s: %s %s; again in %.1fs", self.name, part, name, wait)
                if resp.status not in THROTTLES:
                    await asyncio.sleep(wait)
                continue
            what = "generic_nack" if resp.command_id == pdu.GENERIC_NACK else "refused"
            raise GatewayRejected(self.name, f"{part} {what}: {name}", status=name)

    def _metric(self, status: str) -> None:
        if self.rt is not None:
            self.rt.metrics.smpp_submit(self.name, status)

    def _bound_changed(self) -> None:
        if self.rt is not None:
            self.rt.metrics.smpp_binds(self.name, sum(1 for s in self.sessions if s.bound.is_set()))

    async def _record_parts(self, ids: list[str]) -> None:
        """Map each part's id to the message for the receipts' roll-up (before the send is
        recorded, so early receipts are found). One smpp_parts.lua call per slot of the
        connector: the other slots' first (their parked receipts are carried over), the first
        part's slot last (it holds the roll-up); then the carried parked receipts are deleted.
        Redis away: logged; the send still counts."""
        rt, name = self._runtime(), self.name
        b, now = self.receipt_buckets, rt.clock.now_ms()
        fields = [idmaps.field(i) for i in ids]
        first, home = fields[0], b.slot(fields[0])
        by_slot: dict[int, list[Part]] = {}
        for n, f in enumerate(fields, 1):
            by_slot.setdefault(b.slot(f), []).append(Part(n, f, parked_key(rt, name, f)))

        def call(slot: int, carried: tuple[tuple[int, str], ...] = ()) -> SmppPartsArgs:
            rollup = slot == home
            return SmppPartsArgs(
                first, len(ids), keys.smpp_segments(name, slot, b.bucket(now)), b.ttl_s(now),
                tuple(by_slot[slot]), keys.smpp_rollup(name, slot, first) if rollup else "",
                b.window_s if rollup else 0, carried,
            )  # fmt: skip

        others = [call(slot) for slot in by_slot if slot != home]

        async def elsewhere(pipe: Pipeline) -> None:
            for c in others:
                await rt.store.run("smpp_parts", c.to_keys(), c.to_argv(), client=pipe)

        try:
            found = [parse_rollup(r) for r in await rt.store.coalescer.run(elsewhere)] if others else []
            carried = tuple((int(k), v) for got in found for k, v in got.items())
            last = call(home, carried)

            async def roll(pipe: Pipeline) -> None:
                await rt.store.run("smpp_parts", last.to_keys(), last.to_argv(), client=pipe)

            (flat,) = await rt.store.coalescer.run(roll)
            for part, _ in carried:
                await rt.store.redis.delete(parked_key(rt, name, fields[part - 1]))
        except (aioredis.RedisError, OSError) as exc:
            log.warning("smpp %s: parts of %s not recorded (%s); their receipts will not roll up",
                        self.name, ids[0], exc)  # fmt: skip
            return
        rolled = _roll_up(parse_rollup(flat), len(ids))
        if rolled is not None:
            await apply_receipt(rt, self.name, Receipt(ids[0], *rolled))

    # Receiving ------------------------------------------------------------------------------

    def _runtime(self) -> Host:
        assert self.rt is not None, "SMPP gateway used before attach()"
        return self.rt

    async def _on_deliver(self, session: Session, p: Pdu) -> int:
        try:
            sm = pdu.parse_sm(p)
        except pdu.MalformedPdu as exc:
            log.warning("smpp %s: %s", session.name, exc)
            return exc.command_status
        if sm.esm_class & 0x3C in RECEIPT_TYPES:
            await self._on_receipt(sm)
        else:
            try:
                await self._on_text(session, p, sm)
            except NotReplicated as exc:
                log.warning("smpp %s: deliver_sm %d answered ESME_RX_T_APPN: %s", session.name, p.seq, exc)
                return pdu.ESME_RX_T_APPN  # the SMSC delivers it again later
        return pdu.ESME_ROK

    async def _on_receipt(self, sm: ShortMessage) -> None:
        rt = self._runtime()
        body = sm.short_message or sm.tlv.get(pdu.TAG_MESSAGE_PAYLOAD, b"")
        r = dlr.receipt_from(text.decode_text(sm.data_coding, body, default="latin_1"), sm.tlv)
        if r is None:
            log.warning("smpp %s: a receipt without a message id: %r", self.name, body[:80])
            return
        if sm.esm_class & 0x3C == INTERMEDIATE:
            # An intermediate notification (asked for with receipts: intermediate) says where the
            # message is on its way, even "UNDELIV" for an attempt the SMSC will retry: it
            # never ends the message's status; only the final receipt does.
            rt.metrics.receipt(self.name, r.status or "enroute", "intermediate")
            log.debug(
                "smpp %s: intermediate notification for %s: %s", self.name, r.smsc_id, r.error or r.status
            )
            return
        if r.status is None:
            return  # ENROUTE, UNKNOWN: nothing to record
        rid = dlr.receipt_id(r.smsc_id, self.config.receipt_id_format)
        name, f = self.name, idmaps.field(rid)
        segs, pids = lookup_keys(rt, name, f, "seg"), lookup_keys(rt, name, f, "pid")
        call = SmppReceiptArgs(
            parked_key=parked_key(rt, name, f), segment_buckets=tuple(segs), provider_buckets=tuple(pids),
            field=f, status=r.status, error=r.error, now_ms=rt.clock.now_ms(), park_ttl_s=PARK_TTL_S,
        )  # fmt: skip

        async def find(pipe: Pipeline) -> None:
            await rt.store.run("smpp_receipt", call.to_keys(), call.to_argv(), client=pipe)

        (raw,) = await rt.store.coalescer.run(find)
        found = SmppReceiptFound.parse(raw)
        if found.kind == "single":  # found, so recorded at once (one round trip less than apply_receipt)
            await record_receipt(rt, self.name, found.value, Receipt(rid, r.status, r.error))
            if self.queries is not None and r.status in FINAL_STATUSES:
                await self.queries.settled(rid)
        elif found.kind == "part":
            if r.status == "sent":
                return
            first, parts, part = found.value.split("|")
            roll = keys.smpp_rollup(self.name, self.receipt_buckets.slot(first), first)
            async with rt.store.redis.pipeline(transaction=True) as pipe:
                pipe.hset(roll, part, f"{r.status}|{r.error}")
                pipe.expire(roll, self.receipt_buckets.window_s)
                pipe.hgetall(roll)
                _, _, fields = await pipe.execute()
            rolled = _roll_up({k.decode(): v.decode() for k, v in fields.items()}, int(parts))
            if rolled is not None:
                await apply_receipt(rt, self.name, Receipt(first, *rolled))
                if self.queries is not None:
                    await self.queries.settled(first)
        else:
            rt.metrics.receipt(self.name, r.status, "parked")

    async def _on_text(self, session: Session, p: Pdu, sm: ShortMessage) -> None:
        rt = self._runtime()
        data = sm.short_message or sm.tlv.get(pdu.TAG_MESSAGE_PAYLOAD, b"")
        concat, body = text.parse_udh(sm.esm_class, data)
        if concat is None:
            concat = text.concat_from_tlvs(sm.tlv)
        content = text.decode_text(sm.data_coding, body, default=self.config.default_encoding)
        sender = sm.source.addr
        try:
            number = "+" + sender if sm.source.ton == 1 and sender.isdigit() else sender
            contact = to_e164(number, rt.config.numbers.default_region)
        except InvalidNumber as exc:
            log.warning("smpp %s: text from %r dropped: not a phone number (%s)", session.name, sender, exc)
            rt.metrics.inbound(self.name, "invalid_sender")
            return
        if concat is not None and concat.total > 1:
            shard = shard_of(rt, contact)
            parts_key = keys.smpp_mo_parts(contact, shard, self.name, sm.dest.addr, concat.ref, concat.total)
            async with rt.store.redis.pipeline(transaction=True) as pipe:
                pipe.hset(parts_key, str(concat.seq), content)
                pipe.expire(parts_key, int(self.config.mo_part_ttl))
                pipe.hgetall(parts_key)
                *_, parts = await pipe.execute()
            if len(parts) < concat.total:
                return
            content = "".join(parts[str(k).encode()].decode() for k in sorted(int(x) for x in parts))
            digest = hashlib.blake2b(f"{sm.dest.addr}|{concat.ref}|{content}".encode(), digest_size=8)
            provider_id = f"sar-{concat.ref}-{concat.total}-{digest.hexdigest()}"
        else:
            parts_key = ""
            # Unique per process, bind and connection: an SMSC that resends a deliver_sm whose
            # resp it missed uses the same sequence number on the same connection.
            provider_id = f"{self._conn_token}-{session.name}-{session.binds}-{p.seq}"
        accepted = await rt.accept_inbound(
            gateway=self.name, contact=contact, to=sm.dest.addr, text=content, provider_id=provider_id
        )
        if accepted.status == "conflict":  # cannot happen with the ids above; say so if it does
            log.error(
                "smpp %s: text id %s reused with another text; kept the first", session.name, provider_id
            )
        if parts_key:
            await rt.store.redis.delete(parts_key)
        log.debug("smpp %s: text from %s taken (%s)", session.name, mask(contact), provider_id)


#: registered_delivery by receipt level (SMPP 3.4 section 5.2.17): bits 0-1 the SMSC delivery
#: receipt (01 final, 10 failure only), bit 4 intermediate notifications.
REGISTERED_DELIVERY = {"none": 0x00, "final": 0x01, "failure": 0x02, "intermediate": 0x11}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def receipt_level(value: bool | str, key: str = "registered_delivery") -> str:
    """A connector's ``registered_delivery`` as a level (true: final, false: none)."""
    if isinstance(value, bool):
        return "final" if value else "none"
    v = value.strip().lower()
    if v in RECEIPT_LEVELS:
        return v
    if v in _TRUE or v in _FALSE:
        return "final" if v in _TRUE else "none"
    raise ConfigError(key, f"must be one of {', '.join(RECEIPT_LEVELS)} (or true/false), got {value!r}")


def _tls_options(c: SmppConfig) -> tls.TlsOptions:
    return tls.TlsOptions(
        enabled=c.tls, ca=c.tls_ca, verify=c.tls_verify, verify_hostname=c.tls_verify_hostname,
        server_name=c.tls_server_name, cert=c.tls_cert, key=c.tls_key,
    )  # fmt: skip


def _source_ton_npi(config: SmppConfig, sender: str | None = None) -> tuple[int, int]:
    addr = config.sender if sender is None else sender
    if sender is None and config.source_ton >= 0:
        return config.source_ton, max(0, config.source_npi)
    if not addr.lstrip("+").isdigit():
        return 5, 0  # alphanumeric
    if addr.startswith("+") or len(addr) > 8:
        return 1, 1  # international, E.164
    return 3, 0  # short code: network specific


def _address(addr: str, ton: int, npi: int) -> Address:
    """An international number goes without its ``+`` (TON 1 says it is international)."""
    return Address(addr.removeprefix("+") if ton == 1 else addr, ton, npi)


def _roll_up(parts: dict[str, str], total: int) -> tuple[str, str] | None:
    """One status for a multipart message from its parts' receipts: a failure as soon as one
    part failed, delivered once every part is; None while that is not known yet."""
    states = {int(k): v.split("|", 1) for k, v in parts.items()}
    for k in sorted(states):
        status, error = (states[k] + [""])[:2]
        if status in FINAL_FAILURES:
            return status, f"part {k}/{total}: {error}".rstrip(": ")
    if len(states) >= total and all(v[0] == "delivered" for v in states.values()):
        return "delivered", ""
    return None
