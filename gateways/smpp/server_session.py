"""One ESME's connection to Parley's SMPP server: bind, submits in, deliver_sm out, keep-alive.

    open --bind_* OK--> bound (transmitter | receiver | transceiver) --unbind / drop--> closed
      |                    |
      |  bind_timeout      +-- lease renewals (the account's global bind count) fail: unbind, close
      +-- no bind in time: closed

Who holds what:
- The read loop is the only reader of the socket. A submit is handled in its own task (so
  submits of one bind are pipelined into Redis together) and answered when the engine has it;
  responses may go out of order, as SMPP allows. At most ``window`` submits are in hand per
  bind; one more is answered ESME_RMSGQFUL at once.
- deliver_sm (receipts and MOs from the account's queue, gateways/smpp/server_queue.py) is sent
  by :meth:`deliver`: the future is registered under its sequence number before the write, and
  ``room`` (window minus deliver_sm unanswered) says how many more the queue may hand this bind.
- The keep-alive sends enquire_link after ``enquire_link`` seconds without a PDU from the ESME;
  no answer within ``response_timeout`` closes the connection. A deliver_sm unanswered that long
  also closes it (its entry goes back to the queue).
- Closing fails every deliver_sm still unanswered with ConnectionError (the queue offers them
  again), drops the bind's lease, and closes the socket.

Bind answers: an unknown system_id ESME_RINVSYSID; a wrong password ESME_RINVPASWD; a bind type
the account may not open, or its ``max_binds`` open already (every process together),
ESME_RBINDFAIL; a second bind on a bound connection ESME_RALYBND. Before a bind, a submit gets
ESME_RINVBNDSTS, and so does a submit on a receiver bind. An unknown command gets generic_nack
ESME_RINVCMDID, a body that cannot be read generic_nack ESME_RINVMSGLEN (the connection stays),
a length field out of range generic_nack ESME_RINVCMDLEN and the connection is closed (the
stream cannot be trusted after it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

from engine.core.config import SmppAccountConfig, SmppServerConfig
from engine.core.ports import SmppServerHost
from gateways.scripts.smpps_binds import SmppsBindsArgs
from gateways.smpp import pdu, server_pdu
from gateways.smpp.pdu import Address, Pdu, ShortMessage
from gateways.smpp.server_submit import Refused, SubmitHandler
from gateways.smpp.text import encode_message


class Server(Protocol):
    """What a session uses of its server (gateways/smpp/server.py)."""

    config: SmppServerConfig
    rt: SmppServerHost
    accounts: dict[str, SmppAccountConfig]
    submits: SubmitHandler

    async def authenticate(self, system_id: str, password: str) -> int: ...

    def bound(self, session: ServerSession) -> None: ...

    def unbound(self, session: ServerSession) -> None: ...

    def wake(self, session: ServerSession) -> None: ...

    def counted(self, account: str, command_id: int, status: int) -> None: ...


log = logging.getLogger(__name__)

MODES = {
    pdu.BIND_TRANSMITTER: "transmitter",
    pdu.BIND_RECEIVER: "receiver",
    pdu.BIND_TRANSCEIVER: "transceiver",
}
SUBMITS = (pdu.SUBMIT_SM, server_pdu.DATA_SM, server_pdu.SUBMIT_MULTI)


class ServerSession:
    """One connection; ``run()`` serves it until it ends."""

    def __init__(self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.cfg = server.config
        self.reader, self.writer = reader, writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.id = secrets.token_hex(6)
        self.account: SmppAccountConfig | None = None
        self.mode = ""
        self._seq = 0
        self._pending: dict[int, asyncio.Future[Pdu]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._submits = 0
        self._last_rx = time.monotonic()
        self._closed = asyncio.Event()

    @property
    def name(self) -> str:
        who = self.account.system_id if self.account else "-"
        return f"{who}/{self.id}:{self.mode or 'open'}@{self.peer}"

    @property
    def room(self) -> int:
        """How many more deliver_sm this bind may be sent now (its window minus those unanswered)."""
        if self.account is None or self._closed.is_set():
            return 0
        return self.account.window - len(self._pending)

    # The connection ---------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._serve()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except pdu.MalformedPdu as exc:
            log.warning("smpp-server %s: %s; closing", self.name, exc)
            self._send(pdu.generic_nack(exc.seq, exc.command_status))
        except Exception:
            log.exception("smpp-server %s: session error; closing", self.name)
        finally:
            await self._close()

    async def _serve(self) -> None:
        try:
            await asyncio.wait_for(self._until_bound(), self.cfg.bind_timeout)
        except TimeoutError:
            log.info("smpp-server %s: no bind within %.0fs; closing", self.name, self.cfg.bind_timeout)
            return
        if self.account is None:
            return
        keepalive = asyncio.create_task(self._keepalive())
        try:
            while not self._closed.is_set():
                if not await self._dispatch(await self._read()):
                    return
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive

    async def _read(self) -> Pdu:
        p = await pdu.read_pdu(self.reader, self.cfg.max_pdu)
        self._last_rx = time.monotonic()
        return p

    async def _until_bound(self) -> None:
        """Answer PDUs until a bind succeeds (``self.account`` set) or the ESME leaves."""
        while self.account is None:
            p = await self._read()
            if p.command_id in MODES:
                await self._bind(p)
            elif p.command_id == pdu.ENQUIRE_LINK:
                self._send(pdu.enquire_link_resp(p.seq))
            elif p.command_id == pdu.UNBIND:
                self._send(pdu.unbind_resp(p.seq))
                raise ConnectionError("unbound before binding")
            elif p.command_id in SUBMITS:
                self._send(server_pdu.submit_resp(p.command_id, p.seq, pdu.ESME_RINVBNDSTS))
            elif not p.is_response:
                self._send(pdu.generic_nack(p.seq, pdu.ESME_RINVBNDSTS if _known(p) else pdu.ESME_RINVCMDID))

    async def _bind(self, p: Pdu) -> None:
        try:
            system_id, password, _ = pdu.parse_bind(p)
        except pdu.MalformedPdu as exc:
            self._send(pdu.generic_nack(p.seq, exc.command_status))
            return
        mode = MODES[p.command_id]
        status = await self.server.authenticate(system_id, password)
        account = self.server.accounts.get(system_id)
        if status == pdu.ESME_ROK and account is not None:
            if mode not in account.bind_types:
                status = pdu.ESME_RBINDFAIL
                log.warning("smpp-server %s: %s may not bind as %s", self.name, system_id, mode)
            elif not await self._lease("take", account):
                status = pdu.ESME_RBINDFAIL
                log.warning(
                    "smpp-server %s: %s has its %d binds open", self.name, system_id, account.max_binds
                )
        self._send(pdu.bind_resp(p.command_id, p.seq, status, self.cfg.system_id))
        if status != pdu.ESME_ROK or account is None:
            log.info("smpp-server %s: bind as %r refused: %s", self.name, system_id, pdu.status_name(status))
            return
        self.account, self.mode = account, mode
        self.server.bound(self)
        log.info("smpp-server %s: bound", self.name)

    async def _lease(self, mode: Literal["take", "renew", "drop"], account: SmppAccountConfig) -> bool:
        call = SmppsBindsArgs(
            account.system_id, mode, self.id, account.max_binds, int(self.cfg.bind_lease * 1000)
        )
        return bool(await self.server.rt.store.run("smpps_binds", call.to_keys(), call.to_argv()))

    async def _dispatch(self, p: Pdu) -> bool:
        """Handle one PDU of a bound session; False once the session must end."""
        if p.is_response:
            fut = self._pending.pop(p.seq, None)
            if fut is not None and not fut.done():
                fut.set_result(p)
            elif p.command_id == pdu.GENERIC_NACK:
                log.warning(
                    "smpp-server %s: generic_nack %s for seq %d", self.name, pdu.status_name(p.status), p.seq
                )
            return p.command_id != pdu.UNBIND_RESP
        if p.command_id == pdu.ENQUIRE_LINK:
            self._send(pdu.enquire_link_resp(p.seq))
        elif p.command_id == pdu.UNBIND:
            self._send(pdu.unbind_resp(p.seq))
            log.info("smpp-server %s: unbound by the ESME", self.name)
            return False
        elif p.command_id in SUBMITS:
            self._submit(p)
        elif p.command_id in MODES:
            self._send(pdu.bind_resp(p.command_id, p.seq, pdu.ESME_RALYBND, self.cfg.system_id))
        elif p.command_id == pdu.DELIVER_SM:
            self._send(pdu.deliver_sm_resp(p.seq, pdu.ESME_RINVCMDID))
        else:
            self._send(pdu.generic_nack(p.seq, pdu.ESME_RINVCMDID))
        return True

    # Submits ----------------------------------------------------------------------------------

    def _submit(self, p: Pdu) -> None:
        if self.mode == "receiver":
            self._send(server_pdu.submit_resp(p.command_id, p.seq, pdu.ESME_RINVBNDSTS))
            return
        assert self.account is not None
        if self._submits >= self.account.window:
            self._send(server_pdu.submit_resp(p.command_id, p.seq, pdu.ESME_RMSGQFUL))
            return
        self._submits += 1
        self._spawn(self._handle_submit(p))

    async def _handle_submit(self, p: Pdu) -> None:
        assert self.account is not None
        try:
            got = await self.server.submits.submit(self.account, p)
        except Refused as exc:
            log.info("smpp-server %s: %s seq %d refused %s: %s", self.name, p.name, p.seq,
                     pdu.status_name(exc.status), exc)  # fmt: skip
            self._send(server_pdu.submit_resp(p.command_id, p.seq, exc.status))
            self.server.counted(self.account.system_id, p.command_id, exc.status)
        except pdu.MalformedPdu as exc:
            log.warning("smpp-server %s: %s", self.name, exc)
            self._send(pdu.generic_nack(p.seq, exc.command_status))
        except Exception as exc:
            log.warning("smpp-server %s: %s seq %d not taken: %r", self.name, p.name, p.seq, exc)
            self._send(server_pdu.submit_resp(p.command_id, p.seq, pdu.ESME_RSYSERR))
            self.server.counted(self.account.system_id, p.command_id, pdu.ESME_RSYSERR)
        else:
            self._send(server_pdu.submit_resp(p.command_id, p.seq, pdu.ESME_ROK, got.message_id))
            self.server.counted(self.account.system_id, p.command_id, pdu.ESME_ROK)
        finally:
            self._submits -= 1

    # deliver_sm out ---------------------------------------------------------------------------

    async def deliver(self, fields: dict[str, str]) -> int:
        """One queue entry (a receipt ``k=r`` or an MO ``k=m``) as deliver_sm; its resp's status."""
        return (await self.request(lambda seq: pdu.encode_sm(pdu.DELIVER_SM, seq, deliver_sm(fields)))).status

    async def request(self, build: Callable[[int], bytes]) -> Pdu:
        """Send ``build(seq)`` and wait for its response (ConnectionError: the bind went away,
        TimeoutError: no answer within response_timeout, and the connection is closed)."""
        if self._closed.is_set():
            raise ConnectionError(f"{self.name}: closed")
        self._seq = self._seq + 1 if self._seq < 0x7FFFFFFF else 1
        seq = self._seq
        fut: asyncio.Future[Pdu] = asyncio.get_running_loop().create_future()
        self._pending[seq] = fut
        try:
            self.writer.write(build(seq))
            return await asyncio.wait_for(fut, self.cfg.response_timeout)
        except TimeoutError:
            log.warning("smpp-server %s: no answer to seq %d within %.1fs; closing", self.name, seq,
                        self.cfg.response_timeout)  # fmt: skip
            self.writer.close()
            raise
        finally:
            self._pending.pop(seq, None)
            self.server.wake(self)

    # Keep-alive, leases, closing ------------------------------------------------------------

    async def _keepalive(self) -> None:
        assert self.account is not None
        renew = self.cfg.bind_lease / 3
        renewed = time.monotonic()
        while True:
            idle = time.monotonic() - self._last_rx
            wait = min(renew - (time.monotonic() - renewed), self.cfg.enquire_link - idle)
            if wait > 0:
                await asyncio.sleep(wait)
            if time.monotonic() - renewed >= renew:
                renewed = time.monotonic()
                try:
                    if not await self._lease("renew", self.account):
                        log.error("smpp-server %s: bind lease lost; unbinding", self.name)
                        self._send(pdu.unbind(0x7FFFFFFF))
                        self.writer.close()
                        return
                except Exception as exc:  # Redis away: keep the bind, try again next time
                    log.warning("smpp-server %s: bind lease not renewed (%s)", self.name, exc)
            if time.monotonic() - self._last_rx >= self.cfg.enquire_link:
                try:
                    await self.request(pdu.enquire_link)
                except (TimeoutError, ConnectionError):
                    return

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    async def unbind(self, timeout: float = 1.0) -> None:
        """Server shutdown: unbind politely, waiting up to ``timeout`` for unbind_resp."""
        if self.account is not None and not self._closed.is_set():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.request(pdu.unbind), timeout)
        self.writer.close()

    async def _close(self) -> None:
        self._closed.set()
        if self._tasks:  # submits in hand are answered (they are in Redis) before the socket goes
            await asyncio.wait(self._tasks, timeout=self.cfg.response_timeout)
        for seq, fut in list(self._pending.items()):
            if not fut.done():
                fut.set_exception(ConnectionError(f"{self.name}: connection closed (seq {seq})"))
        self._pending.clear()
        if self.account is not None:
            self.server.unbound(self)
            with contextlib.suppress(Exception):
                await self._lease("drop", self.account)
            log.info("smpp-server %s: closed", self.name)
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


def _known(p: Pdu) -> bool:
    return p.command_id in (pdu.DELIVER_SM, server_pdu.QUERY_SM, server_pdu.CANCEL_SM, server_pdu.REPLACE_SM)


def deliver_sm(fields: dict[str, str]) -> ShortMessage:
    """The deliver_sm of a queue entry: a receipt (``k=r``) or an MO (``k=m``)."""
    if fields.get("k") == "r":
        mid, status = fields["id"], fields["st"]
        body = server_pdu.receipt_text(
            mid, status, int(fields["sub"]), int(fields["done"]), fields.get("x", ""),
            "000" if status == "delivered" else "001",
        )  # fmt: skip
        return ShortMessage(
            source=Address(fields["src"], 1, 1),
            dest=Address(fields["dst"], int(fields["dton"]), int(fields["dnpi"])),
            short_message=body.encode("ascii", "replace"), esm_class=server_pdu.ESM_RECEIPT,
            tlvs=server_pdu.receipt_tlvs(mid, status),
        )  # fmt: skip
    (seg,) = encode_message(fields["text"], concat="payload")
    to = fields["to"]
    dest = Address(to.removeprefix("+"), 1, 1) if to.startswith("+") or len(to) > 8 else Address(to, 3, 0)
    return ShortMessage(
        source=Address(fields["from"].removeprefix("+"), 1, 1), dest=dest, short_message=seg.short_message,
        data_coding=seg.data_coding, tlvs=seg.tlvs,
    )  # fmt: skip
