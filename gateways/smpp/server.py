"""Parley's SMPP server: ESMEs (carriers, aggregators, business systems) bind into Parley.

One :class:`SmppServer` per process of role ``smpp-server`` (any number of them, on any host,
all with the same ``smpp_server`` configuration and Redis). What it owns, opened in order and
closed in reverse:

    receipt router (gateways/smpp/server_receipts.py) -> listening socket (TLS optional)
        -> one ServerSession per connection (gateways/smpp/server_session.py)
        -> per account with a receiver/transceiver bind here: an Outbox (server_queue.py)

What is global, across every process (in Redis): an account's open binds (a lease each,
``smpps_binds.lua``), its submit rate (``rate.lua``, as a connector's send rate), its queue of
receipts and MOs (``p:smq:{sm:A}``), the parts of its long messages. What is not: the sessions
themselves (a connection lives in one process) and each bind's windows.

Submits go to the engine through ``ports.SmppServerHost`` (engine/app/runtime.py implements it
with the single send of POST /v1/messages), so the gate, routing and connectors are the same.
MOs to an account's numbers are queued by the connector that received them (the runtime's
inbound port calls :func:`mo_owner`), wherever it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl

from engine.core.config import SmppAccountConfig, SmppServerConfig
from engine.core.passwords import verify_password
from engine.core.ports import SmppServerHost
from gateways.smpp import pdu
from gateways.smpp.server_pdu import DATA_SM, SUBMIT_MULTI
from gateways.smpp.server_queue import Outbox
from gateways.smpp.server_receipts import ReceiptRouter
from gateways.smpp.server_session import ServerSession
from gateways.smpp.server_submit import SubmitHandler

log = logging.getLogger(__name__)

COMMANDS = {pdu.SUBMIT_SM: "submit_sm", DATA_SM: "data_sm", SUBMIT_MULTI: "submit_multi"}


def mo_owner(config: SmppServerConfig, to: str) -> SmppAccountConfig | None:
    """The account that owns number ``to`` (with or without its ``+``), or None."""
    bare = to.strip().removeprefix("+")
    for account in config.accounts:
        if any(n.removeprefix("+") == bare for n in account.numbers):
            return account
    return None


def tls_context(config: SmppServerConfig) -> ssl.SSLContext | None:
    """The server's TLS context (``smpp_server.tls``), or None for plain TCP."""
    if not config.tls.cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(config.tls.cert, config.tls.key)
    if config.tls.client_ca:
        ctx.load_verify_locations(config.tls.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class SmppServer:
    """``async with SmppServer(rt, config):`` listens on ``smpp_server.listen`` (``port`` is the
    port it got: ``:0`` picks a free one)."""

    def __init__(self, rt: SmppServerHost, config: SmppServerConfig) -> None:
        self.rt = rt
        self.config = config
        self.accounts = {a.system_id: a for a in config.accounts}
        self.submits = SubmitHandler(rt, config)
        self.sessions: set[ServerSession] = set()
        self.outboxes: dict[str, Outbox] = {}
        self.port = 0
        #: Passwords verified here (a digest of hash and password): a rebind storm costs no
        #: argon2 work after the first bind of each.
        self._verified: set[bytes] = set()
        self._server: asyncio.Server | None = None
        self._router: ReceiptRouter | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> SmppServer:
        self._router = ReceiptRouter(self.rt, self.accounts, self.config.redeliver_after)
        await self._router.__aenter__()
        host, _, port = self.config.listen.rpartition(":")
        try:
            self._server = await asyncio.start_server(
                self._accept, host, int(port), ssl=tls_context(self.config), reuse_address=True
            )
        except BaseException:
            await self._router.__aexit__(None, None, None)
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("smpp-server listening on %s:%d%s (%d accounts)", host, self.port,
                 " (TLS)" if self.config.tls.cert else "", len(self.accounts))  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*(s.unbind() for s in list(self.sessions)), return_exceptions=True)
        if self._conns:
            await asyncio.wait(self._conns, timeout=self.config.response_timeout + 2)
        for box in self.outboxes.values():
            await box.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        if self._router is not None:
            await self._router.__aexit__(None, None, None)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = ServerSession(self, reader, writer)
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            await session.run()
        finally:
            if task is not None:
                self._conns.discard(task)

    async def authenticate(self, system_id: str, password: str) -> int:
        """ESME_ROK, ESME_RINVSYSID or ESME_RINVPASWD."""
        account = self.accounts.get(system_id)
        if account is None:
            await verify_password(None, password)  # as slow as a wrong password: no name oracle
            return pdu.ESME_RINVSYSID
        token = hashlib.blake2b(f"{account.password_hash}\0{password}".encode(), digest_size=16).digest()
        if token in self._verified:
            return pdu.ESME_ROK
        if not await verify_password(account.password_hash, password):
            return pdu.ESME_RINVPASWD
        self._verified.add(token)
        return pdu.ESME_ROK

    def bound(self, session: ServerSession) -> None:
        assert session.account is not None
        self.sessions.add(session)
        if session.mode in ("receiver", "transceiver"):
            name = session.account.system_id
            box = self.outboxes.get(name)
            if box is None:
                box = self.outboxes[name] = Outbox(self.rt, session.account, self.config.redeliver_after)
            box.add(session)
        self._count_binds(session.account.system_id)

    def unbound(self, session: ServerSession) -> None:
        assert session.account is not None
        self.sessions.discard(session)
        box = self.outboxes.get(session.account.system_id)
        if box is not None:
            box.remove(session)
        self._count_binds(session.account.system_id)

    def wake(self, session: ServerSession) -> None:
        """A deliver_sm was answered: the session has room again."""
        if session.account is not None and (box := self.outboxes.get(session.account.system_id)):
            box.wake()

    def counted(self, account: str, command_id: int, status: int) -> None:
        command = COMMANDS.get(command_id, pdu.command_name(command_id))
        self.rt.metrics.smpp_server_request(account, command, pdu.status_name(status))

    def _count_binds(self, account: str) -> None:
        up = sum(1 for s in self.sessions if s.account is not None and s.account.system_id == account)
        self.rt.metrics.smpp_server_binds(account, up)

    def health(self) -> dict[str, object]:
        by: dict[str, list[str]] = {}
        for s in self.sessions:
            if s.account is not None:
                by.setdefault(s.account.system_id, []).append(s.mode)
        return {"port": self.port, "tls": bool(self.config.tls.cert), "binds": by}
