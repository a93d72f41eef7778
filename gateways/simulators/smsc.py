"""A simulated SMPP 3.4 SMSC on loopback, for demos, tests and load tests.

``async with SimulatedSmsc() as smsc:`` listens on ``smsc.host:smsc.port`` and plays a carrier's
SMSC: it binds ESMEs (transceiver, transmitter, receiver) against ``behaviour.credentials``,
answers submit_sm as ``behaviour.mode`` says (:data:`MODES`), sends delivery receipts (appendix B
text plus the receipted_message_id / message_state TLVs), injects mobile-originated texts with
:meth:`SimulatedSmsc.deliver` and records everything it was sent. Every knob lives on
:class:`SmscBehaviour` and may be changed while it runs. PDUs are built and read by
``gateways.smpp.pdu`` only, texts by ``gateways.smpp.text``.

Over 500 lines on purpose: it is a test peer, one carrier whose behaviours (modes, receipts,
throttles, disconnects, the control port the process tests drive) are read together; it ships
with the connectors so that ``parley smsc-sim`` works without the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import random
import ssl
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple

from aiohttp import web

from gateways.smpp import pdu as p
from gateways.smpp.text import Concat, concat_from_tlvs, decode_text, encode_message, parse_udh

log = logging.getLogger(__name__)

MODES = ("happy", "slow", "throttling", "erroring", "disconnecting", "no-response")
ID_FORMATS = ("hex", "decimal", "uuid")
#: message_state values (SMPP 3.4 section 5.2.28) by receipt stat.
MESSAGE_STATES = {"ENROUTE": 1, "DELIVRD": 2, "EXPIRED": 3, "DELETED": 4, "UNDELIV": 5, "ACCEPTD": 6,
                  "UNKNOWN": 7, "REJECTD": 8}  # fmt: skip
#: "slow" mode with ``latency`` left at 0 answers after this long.
SLOW_DEFAULT = 0.5
_RECEIVERS = ("transceiver", "receiver")
_TRANSMITTERS = ("transceiver", "transmitter")
_BIND_MODES = {v: k for k, v in p.BINDS.items()}


@dataclass
class SmscBehaviour:
    """What the SMSC does; every field may be changed at run time."""

    credentials: dict[str, str] = field(default_factory=lambda: {"parley": "secret"})
    mode: str = "happy"
    latency: float = 0.0  # before every submit_sm_resp, in every mode
    max_rate: int = 100  # throttling: submits accepted per sliding second
    error_mix: dict[int, float] = field(default_factory=lambda: {p.ESME_RSYSERR: 1.0})  # erroring
    seed: int = 0
    drop_probability: float = 0.5  # disconnecting
    #: Close every bind this long after it was made (0: never), as SMSCs that recycle binds do.
    drop_bind_after: float = 0.0
    answer_enquire_link: bool = True
    enquire_interval: float = 0.0  # the SMSC's own enquire_link; 0 = never
    id_format: str = "hex"
    #: The first message id (as a number; read when the SMSC starts). 10 makes hex ids ``a``,
    #: ``b``... ``f``, then all-digit ones (``10``, ``11``...) that are also decimal numbers.
    id_start: int = 0x1A2B3C
    dlr_id_format: str = "same"  # "same", "decimal" or "hex": the id as the receipt states it
    dlr_delay: float = 0.05
    dlr_stat: str = "DELIVRD"
    dlr_stat_for: dict[str, str] = field(default_factory=dict)  # destination -> stat
    dlr_before_resp: bool = False
    dlr_resp_timeout: float = 5.0  # a receipt unanswered this long is re-sent once
    dlr_retry_delay: float = 1.0
    #: Answer every submit_sm with a generic_nack of this status instead (0: off).
    nack_status: int = 0
    parts_in_order: bool = True  # False: multipart MOs go out last part first
    #: What an intermediate notification (registered_delivery bit 4) states; it goes out right
    #: after the submit_sm_resp, before the final receipt (after ``dlr_delay``).
    intermediate_stat: str = "ENROUTE"
    #: Receipts asked for are never sent (lost on the way): only query_sm tells.
    dlr_lost: bool = False
    #: query_sm: "" answers the message's state (ENROUTE until ``dlr_delay`` has passed, then
    #: its stat); a stat (ENROUTE, UNKNOWN...) answers that; "fail" answers ESME_RQUERYFAIL.
    query_answer: str = ""


@dataclass
class Submit:
    """A submit_sm as received, and how it was answered (``status`` None: not answered)."""

    at: float
    system_id: str
    bind_id: int
    seq: int
    source: str
    dest: str
    data_coding: int
    esm_class: int
    short_message: bytes
    tlvs: dict[int, bytes]
    registered_delivery: int = 0
    text: str = ""
    concat: Concat | None = None
    message_id: str = ""
    status: int | None = None
    answered_at: float | None = None
    source_ton: int = 0
    source_npi: int = 0
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""


class Message(NamedTuple):
    """A complete (reassembled) accepted message."""

    dest: str
    text: str
    ids: list[str]
    first_at: float
    last_at: float


@dataclass(frozen=True)
class BindEvent:
    at: float
    system_id: str
    mode: str
    status: int


class _Conn:
    def __init__(self, bind_id: int, writer: asyncio.StreamWriter) -> None:
        self.bind_id = bind_id
        self.writer = writer
        self.system_id = ""
        self.mode = ""  # "" until bound
        self.seqs = itertools.count(1)
        self.pending: dict[int, asyncio.Future[int]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def request(self, encode: Callable[[int], bytes]) -> asyncio.Future[int]:
        """Send a request PDU; the future of its response's command_status."""
        seq = next(self.seqs)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending[seq] = fut
        fut.add_done_callback(lambda _: self.pending.pop(seq, None))
        self.send(encode(seq))
        return fut

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def close(self) -> None:
        self.writer.close()


def _report(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if isinstance(exc, ConnectionError | TimeoutError):
        log.info("simulated SMSC: %s", exc or type(exc).__name__)
    elif exc is not None:
        log.error("simulated SMSC task failed", exc_info=exc)


class SimulatedSmsc:
    """``async with SimulatedSmsc(port=0) as smsc`` — an SMPP 3.4 SMSC on 127.0.0.1."""

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, behaviour: SmscBehaviour | None = None,
        control_port: int | None = None, system_id: str = "SimSMSC",
        on_bind: Callable[[BindEvent], None] | None = None,
        on_message: Callable[[Message], None] | None = None, tls: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        """``tls``: serve SMPP over TLS with this server context (its certificate; a client
        certificate required when the context says CERT_REQUIRED)."""
        self.host, self.port, self.control_port = host, port, control_port
        self.tls = tls
        self.behaviour = behaviour or SmscBehaviour()
        self.system_id = system_id
        self.on_bind, self.on_message = on_bind, on_message
        self.received: list[Submit] = []
        self.binds: list[BindEvent] = []
        self.enquire_results: list[tuple[float, int, bool]] = []  # (at, bind_id, ESME answered)
        self._stats: dict[str, int] = defaultdict(int)
        self._rng = random.Random(self.behaviour.seed)
        self._seed = self.behaviour.seed
        self._ids = itertools.count(self.behaviour.id_start)
        self._bind_ids = itertools.count(1)
        self._mo_refs = itertools.count(1)
        self._conns: set[_Conn] = set()
        self._accepts: deque[float] = deque()
        self._parts: dict[tuple[str, str, int, int], dict[int, Submit]] = {}
        self._by_id: dict[str, Submit] = {}  # accepted submits by message id, for query_sm
        self.queries: list[tuple[str, p.Address]] = []  # query_sm received: (message id, source)
        self._messages: list[Message] = []
        self._inboxes: dict[str, asyncio.Queue[Message]] = defaultdict(asyncio.Queue)
        self._bound = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None

    # Lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> SimulatedSmsc:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.control_port is not None:
            self._runner = web.AppRunner(self._control_app(), access_log=None, shutdown_timeout=0.1)
            await self._runner.setup()
            await web.TCPSite(self._runner, self.host, self.control_port).start()
            self.control_port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._server is not None:
            self._server.close()
        await self.drop_all()
        for t in list(self._tasks):
            t.cancel()
        pending = [*self._tasks, *self._handlers]
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    def _spawn(self, coro: Coroutine[Any, Any, None], conn: _Conn | None = None) -> None:
        # The coroutine is the task itself, so a task cancelled before it ran leaves no
        # never-awaited coroutine behind (a connection closing cancels its tasks at once).
        task: asyncio.Task[None] = asyncio.create_task(coro)
        task.add_done_callback(_report)
        for owner in (self._tasks, conn.tasks if conn else None):
            if owner is not None:
                owner.add(task)
                task.add_done_callback(owner.discard)

    # Records -----------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        keys = ("binds_ok", "binds_failed", "binds_dropped", "submits", "accepted", "throttled", "errors",
                "dropped", "receipts_sent", "receipts_resent", "intermediates_sent", "queries", "outbinds",
                "mo_sent", "enquire_links_answered", "enquire_links_sent",
                "enquire_links_unanswered")  # fmt: skip
        return {k: self._stats[k] for k in keys}

    def messages(self) -> list[Message]:
        return list(self._messages)

    async def next_message(self, dest: str, timeout: float = 5.0) -> Message:
        """The next complete accepted message to ``dest`` (waits up to ``timeout`` seconds)."""
        return await asyncio.wait_for(self._inboxes[dest].get(), timeout)

    def active_binds(self) -> int:
        return sum(1 for c in self._conns if c.mode)

    async def drop_all(self) -> None:
        """Close every connection (the ESMEs must reconnect)."""
        conns = list(self._conns)
        for c in conns:
            c.close()
        for c in conns:
            with contextlib.suppress(Exception):
                await c.writer.wait_closed()

    def kick(self, system_id: str) -> int:
        """Close the connections bound as ``system_id``; how many."""
        conns = [c for c in self._conns if c.system_id == system_id]
        for c in conns:
            c.close()
        return len(conns)

    async def outbind(
        self, host: str, port: int, system_id: str = "parley", password: str = "secret"
    ) -> None:
        """Open a connection to an ESME listening at ``host:port`` and send it outbind (SMPP 3.4
        section 2.2.1); the connection is then served like one the ESME opened (it should
        bind_receiver over it; ``behaviour.credentials`` are checked as usual)."""
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(p.outbind(0x7FFFFFFF, system_id, password))  # its own seq: ours count from 1
        self._stats["outbinds"] += 1
        self._spawn(self._serve(reader, writer))

    # Connections -------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(next(self._bind_ids), writer)
        self._conns.add(conn)
        me = asyncio.current_task()
        if me is not None:
            self._handlers.add(me)
            me.add_done_callback(self._handlers.discard)
        self._spawn(self._enquire_loop(conn), conn)
        try:
            while not writer.is_closing():
                await self._handle(conn, await p.read_pdu(reader))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except ssl.SSLError as exc:  # a client that failed our TLS checks
            log.info("simulated SMSC: bind %d: TLS: %s", conn.bind_id, exc.reason or exc)
        except p.MalformedPdu as exc:
            log.warning("simulated SMSC: bind %d: %s; closing", conn.bind_id, exc)
        except Exception:
            log.exception("simulated SMSC: bind %d failed; closing", conn.bind_id)
        finally:
            self._conns.discard(conn)
            for fut in conn.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection closed"))
            for t in list(conn.tasks):
                t.cancel()
            conn.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, conn: _Conn, pdu: p.Pdu) -> None:
        cid = pdu.command_id
        if pdu.is_response:
            fut = conn.pending.pop(pdu.seq, None)
            if fut is not None and not fut.done():
                fut.set_result(pdu.status)
        elif cid in _BIND_MODES:
            self._bind(conn, pdu)
        elif cid == p.SUBMIT_SM:
            await self._submit(conn, pdu)
        elif cid == p.QUERY_SM:
            self._query(conn, pdu)
        elif cid == p.ENQUIRE_LINK:
            if self.behaviour.answer_enquire_link:
                conn.send(p.enquire_link_resp(pdu.seq))
                self._stats["enquire_links_answered"] += 1
        elif cid == p.UNBIND:
            conn.send(p.unbind_resp(pdu.seq))
            conn.mode = ""
            conn.close()
        else:
            conn.send(p.generic_nack(pdu.seq, p.ESME_RINVCMDID))

    def _bind(self, conn: _Conn, pdu: p.Pdu) -> None:
        mode = _BIND_MODES[pdu.command_id]
        try:
            system_id, password, _ = p.parse_bind(pdu)
        except p.MalformedPdu as exc:
            conn.send(p.generic_nack(pdu.seq, exc.command_status))
            return
        creds = self.behaviour.credentials
        if conn.mode:
            status = p.ESME_RALYBND
        elif system_id not in creds:
            status = p.ESME_RINVSYSID
        elif creds[system_id] != password:
            status = p.ESME_RINVPASWD
        else:
            status = p.ESME_ROK
        conn.send(p.bind_resp(pdu.command_id, pdu.seq, status, self.system_id))
        event = BindEvent(time.time(), system_id, mode, status)
        self.binds.append(event)
        self._stats["binds_ok" if status == p.ESME_ROK else "binds_failed"] += 1
        if self.on_bind:
            self.on_bind(event)
        if status == p.ESME_ROK:
            conn.system_id, conn.mode = system_id, mode
            self._bound.set()
            if self.behaviour.drop_bind_after > 0:
                self._spawn(self._drop_later(conn, self.behaviour.drop_bind_after), conn)
        elif status != p.ESME_RALYBND:
            conn.close()

    async def _drop_later(self, conn: _Conn, after: float) -> None:
        await asyncio.sleep(after)
        self._stats["binds_dropped"] += 1
        conn.close()

    # submit_sm ---------------------------------------------------------------------------

    async def _submit(self, conn: _Conn, pdu: p.Pdu) -> None:
        if conn.mode not in _TRANSMITTERS:
            conn.send(p.submit_sm_resp(pdu.seq, p.ESME_RINVBNDSTS))
            return
        try:
            sm = p.parse_sm(pdu)
        except p.MalformedPdu as exc:
            conn.send(p.generic_nack(exc.seq or pdu.seq, exc.command_status))
            return
        sub = _record(conn, pdu.seq, sm)
        self.received.append(sub)
        self._stats["submits"] += 1
        b = self.behaviour
        if self._seed != b.seed:
            self._rng, self._seed = random.Random(b.seed), b.seed
        if b.mode == "no-response":
            return
        if b.nack_status:
            conn.send(p.generic_nack(pdu.seq, b.nack_status))
            sub.status, sub.answered_at = b.nack_status, time.time()
            return
        if b.mode == "disconnecting" and self._rng.random() < b.drop_probability:
            self._stats["dropped"] += 1
            conn.close()
            return
        status = self._decide(b)
        if status == p.ESME_ROK:
            sub.message_id = self._new_id(b.id_format)
        self._spawn(self._answer(conn, sub, status), conn)

    def _query(self, conn: _Conn, pdu: p.Pdu) -> None:
        """query_sm: the state of a message this account sent (section 4.8)."""
        self._stats["queries"] += 1
        try:
            message_id, source = p.parse_query_sm(pdu)
        except p.MalformedPdu as exc:
            conn.send(p.generic_nack(pdu.seq, exc.command_status))
            return
        self.queries.append((message_id, source))
        sub, b = self._by_id.get(message_id), self.behaviour
        if conn.mode not in _TRANSMITTERS:
            conn.send(p.query_sm_resp(pdu.seq, p.ESME_RINVBNDSTS))
            return
        if sub is None or sub.system_id != conn.system_id or b.query_answer == "fail":
            conn.send(p.query_sm_resp(pdu.seq, p.ESME_RQUERYFAIL))
            return
        done = sub.answered_at is not None and time.time() - sub.answered_at >= b.dlr_delay
        stat = b.query_answer or (self._stat(sub) if done else "ENROUTE")
        final = stat not in ("ENROUTE", "ACCEPTD", "UNKNOWN")
        final_date = time.strftime("%y%m%d%H%M%S", time.gmtime()) + "000+" if final else ""
        answer = p.QueryAnswer(
            message_id, final_date, MESSAGE_STATES.get(stat, 7), 0 if stat == "DELIVRD" else 1
        )
        conn.send(p.query_sm_resp(pdu.seq, p.ESME_ROK, answer))

    def _decide(self, b: SmscBehaviour) -> int:
        now = time.monotonic()
        while self._accepts and self._accepts[0] <= now - 1.0:  # the sliding second
            self._accepts.popleft()
        if b.mode == "throttling" and len(self._accepts) >= b.max_rate:
            self._stats["throttled"] += 1
            return p.ESME_RTHROTTLED
        if b.mode == "erroring":
            r, acc = self._rng.random(), 0.0
            for status, prob in b.error_mix.items():
                acc += prob
                if r < acc and status != p.ESME_ROK:
                    self._stats["errors"] += 1
                    return status
        self._accepts.append(now)
        self._stats["accepted"] += 1
        return p.ESME_ROK

    def _new_id(self, fmt: str) -> str:
        if fmt == "uuid":
            return str(uuid.uuid4())
        n = next(self._ids)
        return str(n) if fmt == "decimal" else f"{n:x}"

    async def _answer(self, conn: _Conn, sub: Submit, status: int) -> None:
        b = self.behaviour
        latency = b.latency or (SLOW_DEFAULT if b.mode == "slow" else 0.0)
        if latency:
            await asyncio.sleep(latency)
        wants_dlr = status == p.ESME_ROK and self._wants_receipt(sub)
        early = self._find_receiver(sub.system_id, sub.bind_id) if wants_dlr and b.dlr_before_resp else None
        if early is not None:  # the receipt overtakes the submit_sm_resp, as fast SMSCs do
            sm = self._receipt_sm(sub)
            self._spawn(self._follow_receipt(self._send_receipt(early, sm), sub, sm))
        conn.send(p.submit_sm_resp(sub.seq, status, sub.message_id))
        sub.status, sub.answered_at = status, time.time()
        if status == p.ESME_ROK:
            self._collect(sub)
        if status == p.ESME_ROK and sub.registered_delivery & 0x10:
            self._spawn(self._intermediate(sub))
        if status == p.ESME_ROK:
            self._by_id[sub.message_id] = sub
        if wants_dlr and early is None and not b.dlr_lost:
            self._spawn(self._receipt(sub, b.dlr_delay))

    def _collect(self, sub: Submit) -> None:
        c = sub.concat
        if c is None or c.total == 1:
            self._complete([sub])
            return
        key = (sub.source, sub.dest, c.ref, c.total)
        parts = self._parts.setdefault(key, {})
        parts[c.seq] = sub
        if len(parts) == c.total:
            del self._parts[key]
            self._complete([parts[i] for i in sorted(parts)])

    def _complete(self, subs: list[Submit]) -> None:
        msg = Message(subs[0].dest, "".join(s.text for s in subs), [s.message_id for s in subs],
                      min(s.at for s in subs), max(s.at for s in subs))  # fmt: skip
        self._messages.append(msg)
        self._inboxes[msg.dest].put_nowait(msg)
        if self.on_message:
            self.on_message(msg)

    # Receipts ----------------------------------------------------------------------------

    def _stat(self, sub: Submit) -> str:
        return self.behaviour.dlr_stat_for.get(sub.dest, self.behaviour.dlr_stat)

    def _wants_receipt(self, sub: Submit) -> bool:
        """registered_delivery bits 0-1: 01 a final receipt, 10 only when it failed."""
        level = sub.registered_delivery & 0x03
        return level == 1 or (level == 2 and self._stat(sub) != "DELIVRD")

    async def _intermediate(self, sub: Submit) -> None:
        """An intermediate notification (esm_class 0x20) before the final receipt, stating
        ``behaviour.intermediate_stat`` (ENROUTE; UNDELIV plays a first attempt that failed)."""
        sm = self._receipt_sm(sub, stat=self.behaviour.intermediate_stat, esm_class=0x20)
        conn = await self._receiver(sub.system_id, prefer=sub.bind_id, timeout=30.0)
        self._stats["intermediates_sent"] += 1
        await asyncio.wait_for(self._send_sm(conn, sm), 5.0)

    def _receipt_sm(self, sub: Submit, *, stat: str = "", esm_class: int = 0x04) -> p.ShortMessage:
        b = self.behaviour
        stat = stat or self._stat(sub)
        rid = _dlr_id(sub.message_id, b.id_format, b.dlr_id_format)
        ok = stat == "DELIVRD"
        body = (f"id:{rid} sub:001 dlvrd:{'001' if ok else '000'} submit date:{_stamp(sub.at)} "
                f"done date:{_stamp(time.time())} stat:{stat} err:{'000' if ok else '001'} "
                f"text:{sub.text[:20]}")  # fmt: skip
        return p.ShortMessage(
            source=p.Address(sub.dest), dest=p.Address(sub.source), esm_class=esm_class, data_coding=0,
            short_message=body.encode("ascii", "replace")[:254],
            tlvs=((p.TAG_RECEIPTED_MESSAGE_ID, rid.encode() + b"\0"),
                  (p.TAG_MESSAGE_STATE, bytes((MESSAGE_STATES.get(stat, 7),)))),
        )  # fmt: skip

    async def _receipt(self, sub: Submit, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        sm = self._receipt_sm(sub)
        conn = await self._receiver(sub.system_id, prefer=sub.bind_id, timeout=30.0)
        await self._follow_receipt(self._send_receipt(conn, sm), sub, sm)

    def _send_receipt(self, conn: _Conn, sm: p.ShortMessage) -> asyncio.Future[int]:
        self._stats["receipts_sent"] += 1
        return self._send_sm(conn, sm)

    async def _follow_receipt(self, fut: asyncio.Future[int], sub: Submit, sm: p.ShortMessage) -> None:
        """Re-send the receipt once if its deliver_sm_resp is late or an error."""
        b = self.behaviour
        try:
            if await asyncio.wait_for(fut, b.dlr_resp_timeout) == p.ESME_ROK:
                return
        except (TimeoutError, ConnectionError):
            pass
        await asyncio.sleep(b.dlr_retry_delay)
        conn = await self._receiver(sub.system_id, prefer=sub.bind_id, timeout=30.0)
        self._stats["receipts_resent"] += 1
        self._send_receipt(conn, sm)

    def _find_receiver(self, system_id: str | None, prefer: int = 0) -> _Conn | None:
        """A receiver-capable bind of ``system_id`` (None: of any account)."""
        found = [c for c in self._conns if system_id in (None, c.system_id) and c.mode in _RECEIVERS
                 and not c.writer.is_closing()]  # fmt: skip
        return min(found, key=lambda c: (c.bind_id != prefer, c.bind_id)) if found else None

    async def _receiver(self, system_id: str | None, *, prefer: int = 0, timeout: float = 5.0) -> _Conn:
        """A receiver-capable bind of ``system_id`` (bind ``prefer`` first), waiting for one."""
        deadline = time.monotonic() + timeout
        while (conn := self._find_receiver(system_id, prefer)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no receiver-capable bind for {system_id or 'any account'!r}")
            self._bound.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._bound.wait(), min(left, 0.5))
        return conn

    def _send_sm(self, conn: _Conn, sm: p.ShortMessage) -> asyncio.Future[int]:
        return conn.request(lambda seq: p.encode_sm(p.DELIVER_SM, seq, sm))

    # MO ----------------------------------------------------------------------------------

    async def deliver(
        self, source: str, dest: str, text: str, *, system_id: str | None = None, concat: str = "udh8",
        ref: int | None = None, data_coding: int | None = None, raw: bytes | None = None,
    ) -> list[int]:  # fmt: skip
        """Text the ESME as handset ``source`` would; the deliver_sm_resp statuses, part by part."""
        if raw is not None:
            sms = [p.ShortMessage(p.Address(source), p.Address(dest), raw, data_coding or 0)]
        else:
            ref = next(self._mo_refs) & 0xFFFF if ref is None else ref
            segments = encode_message(text, concat=concat, ref=ref)
            sms = [p.ShortMessage(p.Address(source), p.Address(dest), s.short_message, s.data_coding,
                                  s.esm_class, tlvs=s.tlvs) for s in segments]  # fmt: skip
            if data_coding is not None:
                sms = [dataclasses.replace(sm, data_coding=data_coding) for sm in sms]
        if not self.behaviour.parts_in_order:
            sms.reverse()
        return [await self.deliver_sm(sm, system_id) for sm in sms]

    async def deliver_sm(self, sm: p.ShortMessage, system_id: str | None = None) -> int:
        """Send one exact deliver_sm; its deliver_sm_resp status. TimeoutError when no receiver-capable
        bind turns up or no answer comes within 5 s; ConnectionError when the bind drops first."""
        conn = await self._receiver(system_id, timeout=5.0)
        fut = self._send_sm(conn, sm)
        self._stats["mo_sent"] += 1
        return await asyncio.wait_for(fut, 5.0)

    async def _enquire_loop(self, conn: _Conn) -> None:
        while True:
            interval = self.behaviour.enquire_interval
            await asyncio.sleep(interval or 0.2)
            if not interval or not conn.mode:
                continue
            fut = conn.request(p.enquire_link)
            self._stats["enquire_links_sent"] += 1
            try:
                answered = await asyncio.wait_for(fut, max(interval, 1.0)) == p.ESME_ROK
            except TimeoutError:
                answered = False
            self._stats["enquire_links_unanswered"] += not answered
            self.enquire_results.append((time.time(), conn.bind_id, answered))

    # HTTP control ------------------------------------------------------------------------

    def _control_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/mo", self._http_mo)
        app.router.add_get("/received", self._http_received)
        app.router.add_get("/stats", self._http_stats)
        app.router.add_post("/behaviour", self._http_behaviour)
        return app

    async def _http_mo(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            statuses = await self.deliver(body["from"], body["to"], body["text"],
                                          system_id=body.get("system_id"))  # fmt: skip
        except (TimeoutError, ConnectionError) as exc:
            return web.json_response({"error": str(exc) or "no deliver_sm_resp"}, status=504)
        return web.json_response({"statuses": statuses})

    async def _http_received(self, request: web.Request) -> web.Response:
        return web.json_response([{"dest": m.dest, "text": m.text, "ids": m.ids, "at": m.last_at}
                                  for m in self._messages])  # fmt: skip

    async def _http_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _http_behaviour(self, request: web.Request) -> web.Response:
        try:
            self.configure(**(await request.json()))
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        data = asdict(self.behaviour)
        data["error_mix"] = {str(k): v for k, v in self.behaviour.error_mix.items()}
        return web.json_response(data)

    def configure(self, **changes: Any) -> None:
        """Change behaviour fields by name (``error_mix`` keys may be strings, "0x58" or "88")."""
        names = {f.name for f in fields(SmscBehaviour)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown behaviour field(s): {', '.join(sorted(unknown))}")
        for name, allowed in (("mode", MODES), ("id_format", ID_FORMATS),
                              ("dlr_id_format", ("same", *ID_FORMATS[:2]))):  # fmt: skip
            if name in changes and changes[name] not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}")
        if "error_mix" in changes:
            changes["error_mix"] = {int(k, 0) if isinstance(k, str) else int(k): float(v)
                                    for k, v in changes["error_mix"].items()}  # fmt: skip
        for name, value in changes.items():
            setattr(self.behaviour, name, value)


def _record(conn: _Conn, seq: int, sm: p.ShortMessage) -> Submit:
    tlvs = sm.tlv
    concat, body = parse_udh(sm.esm_class, sm.short_message)
    if concat is None:
        concat = concat_from_tlvs(tlvs)
    if not sm.short_message and p.TAG_MESSAGE_PAYLOAD in tlvs:
        body = tlvs[p.TAG_MESSAGE_PAYLOAD]
    return Submit(
        at=time.time(), system_id=conn.system_id, bind_id=conn.bind_id, seq=seq, source=sm.source.addr,
        dest=sm.dest.addr, data_coding=sm.data_coding, esm_class=sm.esm_class,
        short_message=sm.short_message, tlvs=tlvs, registered_delivery=sm.registered_delivery,
        text=decode_text(sm.data_coding, body), concat=concat, source_ton=sm.source.ton,
        source_npi=sm.source.npi, priority_flag=sm.priority_flag,
        schedule_delivery_time=sm.schedule_delivery_time, validity_period=sm.validity_period,
    )  # fmt: skip


def _stamp(at: float) -> str:
    return time.strftime("%y%m%d%H%M", time.localtime(at))


def _dlr_id(message_id: str, id_format: str, dlr_id_format: str) -> str:
    """The id as the receipt states it: the same, or in decimal / hex."""
    if dlr_id_format == "same" or dlr_id_format == id_format:
        return message_id
    base = 16 if id_format == "hex" else 10
    n = uuid.UUID(message_id).int if id_format == "uuid" else int(message_id, base)
    return str(n) if dlr_id_format == "decimal" else f"{n:x}"
