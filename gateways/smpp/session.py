"""One SMPP bind: connect, bind, keep alive, correlate, reconnect. Owned by its gateway.

    connecting --TCP up--> binding --bind_resp OK--> bound --(drop, unbind, dead link)--+
        ^                      |                                                       |
        |                 bind refused: "refused" (ESME_RINVPASWD...), waits bind_retry |
        +------------- back-off: reconnect_delay doubling to reconnect_max, jitter <---+
                       (back to the first step after a bind the SMSC answered traffic on)

Who holds what:
- The read loop is the only reader of the socket. Every PDU that comes in is dispatched: a
  response (or generic_nack) completes the future registered under its sequence number; a
  deliver_sm goes to the gateway's handler and is answered with the status the handler gives
  (after the text is in Redis); enquire_link and unbind are answered here.
- :meth:`request` registers the future *before* writing, so a response can never arrive for a
  sequence number nobody waits for. The window (``window`` requests outstanding) is a semaphore
  held from before the write until the response or the timeout.
- When the connection ends, every outstanding request fails with :class:`ConnectionLost`
  (the gateway decides whether the SMSC may have taken it). Nothing here retries a submit.
- The keep-alive sends enquire_link after ``enquire_link`` seconds without any PDU from the SMSC;
  no answer within ``response_timeout`` drops the connection, which starts a reconnect.

No exception ends the session's loop: each one is logged with the bind's name, recorded as
``last_error`` (shown in /healthz), and followed by a reconnect after a back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from engine.core.clock import Clock
from gateways.smpp import pdu, tls
from gateways.smpp.pdu import Pdu

log = logging.getLogger(__name__)

#: deliver_sm handler: returns the command_status to answer with (ESME_ROK once it is stored).
DeliverHandler = Callable[["Session", Pdu], Awaitable[int]]


class ConnectionLost(Exception):
    """The connection ended while a request was outstanding (``written``: it had been sent)."""

    def __init__(self, message: str, *, written: bool) -> None:
        super().__init__(message)
        self.written = written


class OutbindRefused(Exception):
    """An SMSC's outbind did not carry the system_id and password expected (or was no outbind)."""


class BindRefused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"bind refused: {pdu.status_name(status)}")
        self.status = status


@dataclass(frozen=True)
class SessionSettings:
    host: str
    port: int
    system_id: str
    password: str
    system_type: str
    address_range: str
    window: int
    enquire_link: float
    response_timeout: float
    connect_timeout: float
    reconnect_delay: float
    reconnect_max: float
    bind_retry: float
    max_pdu: int
    #: TLS to the SMSC (None: plain TCP); ``server_name`` is the name its certificate must be
    #: for and the SNI sent (empty: ``host``).
    tls_context: ssl.SSLContext | None = None
    server_name: str = ""


class Session:
    """``name`` is ``GW/N:mode`` in logs and health."""

    def __init__(
        self, name: str, mode: str, settings: SessionSettings, on_deliver: DeliverHandler,
        on_state: Callable[[], None] = lambda: None, clock: Clock | None = None,
    ) -> None:  # fmt: skip
        """``on_state`` is called when the session becomes bound or stops being bound; ``clock``
        waits out the reconnect back-off (a test's clock records the waits instead)."""
        self.name = name
        self.clock = clock or Clock()
        self.on_state = on_state
        self.mode = mode
        self.s = settings
        self.on_deliver = on_deliver
        self.state = "connecting"
        self.last_error = ""
        self.binds = 0
        self.bound = asyncio.Event()
        self.can_submit = mode in ("transceiver", "transmitter")
        self.can_receive = mode in ("transceiver", "receiver")
        self._window = asyncio.Semaphore(settings.window)
        self._load = 0  # requests written or waiting for the window
        self._pending: dict[int, asyncio.Future[Pdu]] = {}
        self._seq = 0
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._tails: dict[str, asyncio.Task[None]] = {}
        self._last_rx = time.monotonic()
        self._stop = asyncio.Event()
        self._dropped = asyncio.Event()
        #: The SMSC answered something on this connection after it was bound.
        self._answered = False

    # Lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"smpp {self.name}")

    async def close(self, timeout: float = 2.0) -> None:
        """Unbind politely (waiting up to ``timeout`` for unbind_resp), then stop."""
        self._stop.set()
        if self.bound.is_set():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._request(pdu.unbind, windowed=False), timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=timeout)

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    @property
    def load(self) -> int:
        """Requests outstanding plus those waiting for the window: what a new one queues behind."""
        return self._load

    def health(self) -> dict[str, object]:
        return {"mode": self.mode, "state": self.state, "binds": self.binds, "outstanding": self.outstanding,
                "last_error": self.last_error or None}  # fmt: skip

    # Requests -------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = self._seq + 1 if self._seq < 0x7FFFFFFF else 1
        return self._seq

    async def request(self, build: Callable[[int], bytes]) -> Pdu:
        """Send the PDU ``build(seq)`` within the window; its response (or generic_nack).
        Raises TimeoutError (no response within response_timeout) or ConnectionLost."""
        self._load += 1
        try:
            return await self._request(build, windowed=True)
        finally:
            self._load -= 1

    async def _request(self, build: Callable[[int], bytes], *, windowed: bool) -> Pdu:
        if windowed:
            await self._window.acquire()
        try:
            writer = self._writer
            if writer is None or (windowed and not self.bound.is_set()):
                raise ConnectionLost(f"{self.name}: not bound", written=False)
            seq = self._next_seq()
            fut: asyncio.Future[Pdu] = asyncio.get_running_loop().create_future()
            self._pending[seq] = fut  # before the write: the response may come at once
            try:
                writer.write(build(seq))
                await writer.drain()
            except (OSError, RuntimeError) as exc:
                self._pending.pop(seq, None)
                raise ConnectionLost(f"{self.name}: write failed: {exc}", written=True) from exc
            try:
                return await asyncio.wait_for(fut, self.s.response_timeout)
            finally:
                self._pending.pop(seq, None)
        finally:
            if windowed:
                self._window.release()

    def _send(self, data: bytes) -> None:
        if self._writer is not None:
            self._writer.write(data)

    # The connection loop --------------------------------------------------------------------

    async def _run(self) -> None:
        # Failures in a row since the last bind that worked. A bind worked when the SMSC answered
        # something on it after the bind_resp (a response, its own enquire_link, a deliver_sm):
        # an SMSC that drops a working bind now and then is rebound after the first step every
        # time, while one that takes the bind and hangs up at once (or never lets the TCP
        # connection up) is backed off further each time.
        failures = 0
        while not self._stop.is_set():
            delay = 0.0
            self._answered = False
            try:
                await self._connect_and_serve()
                failures = 0
                delay = self.s.reconnect_delay
            except asyncio.CancelledError:
                raise
            except ssl.SSLError as exc:  # before OSError, its base: say what failed
                failures = 1 if self._answered else failures + 1
                self.last_error = tls.describe(exc, self.s.server_name or self.s.host)
                log.error("smpp %s: %s", self.name, self.last_error)
            except BindRefused as exc:
                self.state = "refused"
                self.last_error = str(exc)
                log.error("smpp %s: %s; next try in %.0fs", self.name, exc, self.s.bind_retry)
                delay = self.s.bind_retry
            except (OSError, EOFError, TimeoutError, pdu.MalformedPdu, ConnectionLost) as exc:
                failures = 1 if self._answered else failures + 1
                self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if str(exc).startswith("TLS: "):
                    self.last_error = str(exc)
                log.warning("smpp %s: connection lost: %s", self.name, self.last_error)
            except Exception as exc:  # a bug: log it, never let the bind die silently
                failures = 1 if self._answered else failures + 1
                self.last_error = f"internal error: {exc!r}"
                log.exception("smpp %s: session error", self.name)
            finally:
                writer = self._teardown()
                if writer is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(writer.wait_closed(), 1.0)
            if self._stop.is_set():
                break
            if not delay:
                step = min(self.s.reconnect_max, self.s.reconnect_delay * 2.0 ** max(0, failures - 1))
                delay = step * random.uniform(0.5, 1.0)
            if self.state != "refused":
                self.state = "backoff"
            await self.clock.sleep(delay)

    async def _connect_and_serve(self) -> None:
        self.state = "connecting"
        if self.s.tls_context is None:
            connecting = asyncio.open_connection(self.s.host, self.s.port)
        else:
            connecting = asyncio.open_connection(
                self.s.host,
                self.s.port,
                ssl=self.s.tls_context,
                server_hostname=self.s.server_name or self.s.host,
                ssl_handshake_timeout=self.s.connect_timeout,
            )
        reader, writer = await asyncio.wait_for(connecting, self.s.connect_timeout)
        self._writer = writer
        await self._bind_and_serve(reader)

    async def _bind_and_serve(self, reader: asyncio.StreamReader) -> None:
        """Bind over the connection in ``self._writer`` and serve it until it ends."""
        self._dropped.clear()
        self.state = "binding"
        reader_task = asyncio.create_task(self._read_loop(reader), name=f"smpp {self.name} read")
        try:
            resp = await self._bind_request()
            if resp.status != pdu.ESME_ROK:
                raise BindRefused(resp.status)
            self.state = "bound"
            self.last_error = ""
            self.binds += 1
            self.bound.set()
            self.on_state()
            log.info("smpp %s: bound to %s:%d as %s (smsc %s)", self.name, self.s.host, self.s.port,
                     self.s.system_id, pdu.parse_system_id(resp) or "-")  # fmt: skip
            keepalive = asyncio.create_task(self._keepalive(), name=f"smpp {self.name} keepalive")
            try:
                await reader_task
            finally:
                keepalive.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keepalive
        finally:
            if not reader_task.done():
                reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader_task

    async def _bind_request(self) -> Pdu:
        """Send our bind_* and wait for its response (whatever its status)."""
        try:
            return await self._request(
                lambda seq: pdu.bind(
                    pdu.BINDS[self.mode], seq, system_id=self.s.system_id, password=self.s.password,
                    system_type=self.s.system_type, address_range=self.s.address_range,
                ),
                windowed=False,
            )  # fmt: skip
        except ConnectionLost as exc:
            if self.s.tls_context is None or "closed the connection" not in str(exc):
                raise
            # With TLS 1.3 a server checks the client's certificate after the handshake and
            # hangs up: all we see is the connection closed before the bind_resp.
            raise ConnectionLost(tls.CLOSED_BEFORE_BIND, written=True) from exc

    async def serve_outbind(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, system_id: str, password: str
    ) -> None:
        """Serve one connection an SMSC opened to us (SMPP 3.4 section 2.2.1, outbind): its first
        PDU must be an outbind naming ``system_id`` and ``password``; then we bind (this session's
        mode: receiver) over it and serve it until it ends. Never reconnects: the SMSC opens
        another connection when it wants one. Every failure is logged and kept as last_error."""
        peer = writer.get_extra_info("peername")
        try:
            first = await asyncio.wait_for(pdu.read_pdu(reader, self.s.max_pdu), self.s.response_timeout)
            if first.command_id != pdu.OUTBIND:
                raise OutbindRefused(f"{peer}: the first PDU was {first.name}, not outbind")
            sid, pw = pdu.parse_outbind(first)
            if not (hmac.compare_digest(sid.encode(), system_id.encode())
                    and hmac.compare_digest(pw.encode(), password.encode())):  # fmt: skip
                raise OutbindRefused(
                    f"{peer}: outbind as {sid!r} refused: not the system_id and password expected"
                )
            self._writer = writer
            log.info("smpp %s: outbind from %s as %r; binding", self.name, peer, sid)
            await self._bind_and_serve(reader)
            self.state = "closed"
        except asyncio.CancelledError:
            raise
        except OutbindRefused as exc:
            self.state, self.last_error = "refused", str(exc)
            log.error("smpp %s: %s", self.name, exc)
        except BindRefused as exc:
            self.state, self.last_error = "refused", str(exc)
            log.error("smpp %s: %s (after outbind from %s)", self.name, exc, peer)
        except (OSError, EOFError, TimeoutError, pdu.MalformedPdu, ConnectionLost) as exc:
            self.state = "closed"
            self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning("smpp %s: outbind connection from %s ended: %s", self.name, peer, self.last_error)
        except Exception as exc:  # a bug: log it
            self.state, self.last_error = "closed", f"internal error: {exc!r}"
            log.exception("smpp %s: outbind session error", self.name)
        finally:
            self._writer = writer  # closed (and its requests failed) whether or not it got that far
            self._teardown()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    def _teardown(self) -> asyncio.StreamWriter | None:
        """Forget the connection and close it; returns its writer (to wait until it is closed)."""
        was_bound = self.bound.is_set()
        self.bound.clear()
        if was_bound:
            self.on_state()
        writer, self._writer = self._writer, None
        self._fail_pending("connection closed")
        self._pending.clear()
        if writer is not None:
            writer.close()
        return writer

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        """Read PDUs until the connection ends; raises why it ended (EOF, malformed framing).
        Requests still waiting fail at once, not after their timeout: nothing will answer them."""
        why = "unbound"
        try:
            await self._read_pdus(reader)
        except ssl.SSLError as exc:  # e.g. TLS 1.3: a client certificate refused after the handshake
            why = tls.describe(exc, self.s.server_name or self.s.host)
            raise
        except BaseException as exc:
            why = str(exc) or type(exc).__name__
            raise
        finally:
            self._fail_pending(why)

    def _fail_pending(self, why: str) -> None:
        for seq, fut in list(self._pending.items()):
            if not fut.done():
                fut.set_exception(
                    ConnectionLost(f"{self.name}: connection lost (seq {seq}): {why}", written=True)
                )

    async def _read_pdus(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                p = await pdu.read_pdu(reader, self.s.max_pdu)
            except asyncio.IncompleteReadError:
                raise EOFError("the SMSC closed the connection") from None
            self._last_rx = time.monotonic()
            if self.bound.is_set():
                self._answered = True  # the bind works (see _run)
            if p.is_response:
                fut = self._pending.get(p.seq)
                if fut is not None and not fut.done():
                    fut.set_result(p)
                elif p.command_id == pdu.GENERIC_NACK:
                    log.warning(
                        "smpp %s: generic_nack %s for seq %d", self.name, pdu.status_name(p.status), p.seq
                    )
                else:
                    log.info("smpp %s: late %s for seq %d (timed out)", self.name, p.name, p.seq)
                if p.command_id == pdu.UNBIND_RESP:
                    return
            elif p.command_id == pdu.ENQUIRE_LINK:
                self._send(pdu.enquire_link_resp(p.seq))
            elif p.command_id == pdu.DELIVER_SM:
                self._deliver(p)
            elif p.command_id == pdu.UNBIND:
                self._send(pdu.unbind_resp(p.seq))
                raise EOFError("the SMSC unbound")
            elif p.command_id == pdu.ALERT_NOTIFICATION:  # has no response
                continue
            else:
                self._send(pdu.generic_nack(p.seq, pdu.ESME_RINVCMDID))

    def _deliver(self, p: Pdu) -> None:
        """Answer a deliver_sm once its handler stored it; one source address at a time, so a
        customer's texts reach Redis in the order the SMSC sent them."""
        key = _source_key(p)
        previous = self._tails.get(key)
        task = asyncio.create_task(self._handle_deliver(p, previous))
        self._tails[key] = task
        self._handlers.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._handlers.discard(t)
            if self._tails.get(key) is t:
                del self._tails[key]

        task.add_done_callback(done)

    async def _handle_deliver(self, p: Pdu, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous
        try:
            status = await self.on_deliver(self, p)
        except Exception:
            log.exception("smpp %s: deliver_sm seq %d not handled; answered ESME_RX_T_APPN", self.name, p.seq)
            status = pdu.ESME_RX_T_APPN  # temporary: the SMSC delivers it again later
        self._send(pdu.deliver_sm_resp(p.seq, status))

    async def _keepalive(self) -> None:
        interval = self.s.enquire_link
        while True:
            idle = time.monotonic() - self._last_rx
            if idle < interval:
                await asyncio.sleep(interval - idle)
                continue
            try:
                await self._request(pdu.enquire_link, windowed=False)
            except (TimeoutError, ConnectionLost):
                log.warning("smpp %s: no enquire_link_resp within %.1fs; reconnecting", self.name,
                            self.s.response_timeout)  # fmt: skip
                if self._writer is not None:
                    self._writer.close()
                return


def _source_key(p: Pdu) -> str:
    """The source address of a deliver_sm, read cheaply (the body starts service_type\\0 ton npi addr\\0)."""
    b = p.body
    i = b.find(b"\x00")
    if i < 0:
        return ""
    j = b.find(b"\x00", i + 3)
    return b[i + 3 : j].decode("ascii", "replace") if j > 0 else ""
