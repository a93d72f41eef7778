"""Outbind (SMPP 3.4 section 2.2.1): the SMSC connects to us and asks us to bind.

Some SMSCs deliver texts and receipts only over a connection they open: they connect to the
ESME's address, send ``outbind`` with a system_id and password, and the ESME answers with
``bind_receiver`` on that connection; from then on it is a receiver bind like any other (its
deliver_sm go to the connector's handler, answered once stored). With ``outbind_listen`` the
connector listens for those connections (in every process that sends through it, sharing the
port with SO_REUSEPORT), checks the outbind's credentials (``outbind_system_id`` and
``outbind_password``, by default the connector's own), and binds as receiver with the
connector's ``system_id`` and ``password``. A wrong outbind is logged and its connection closed;
a connection that ends is not reopened by us (the SMSC outbinds again when it wants to).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable

from engine.core.clock import Clock
from engine.core.errors import ConfigError
from gateways.smpp.session import DeliverHandler, Session, SessionSettings

log = logging.getLogger(__name__)
#: Outbind connections served at once per process (a misbehaving peer cannot open thousands).
MAX_SESSIONS = 64


def parse_listen(where: str, value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:2776`` for IPv6) of ``outbind_listen``; ConfigError naming it."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{where}.outbind_listen", f"must be host:port like 0.0.0.0:2776, got {value!r}")
    return host, int(port)


class OutbindListener:
    """Listens for an SMSC's outbind connections; each becomes a receiver Session."""

    def __init__(
        self, gateway: str, listen: tuple[str, int], expect: tuple[str, str], settings: SessionSettings,
        on_deliver: DeliverHandler, on_state: Callable[[], None], clock: Clock | None = None,
    ) -> None:  # fmt: skip
        self.gateway, self.listen, self.expect = gateway, listen, expect
        self.settings, self.on_deliver, self.on_state, self.clock = settings, on_deliver, on_state, clock
        #: Each outbind connection's session, with its handler task and its writer.
        self.sessions: dict[Session, tuple[asyncio.Task[None], asyncio.StreamWriter]] = {}
        self.port = 0
        self._server: asyncio.Server | None = None
        self._numbers = itertools.count(1)

    async def start(self) -> None:
        host, port = self.listen
        self._server = await asyncio.start_server(self._serve, host, port, reuse_port=True)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("smpp %s: listening for outbind on %s:%d", self.gateway, host, self.port)

    async def stop(self, timeout: float = 2.0) -> None:
        """Stop listening, unbind every outbind session, close what is left. The connection
        handlers are left to finish (asyncio reports a cancelled one as an error)."""
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*(s.close(timeout) for s in list(self.sessions)), return_exceptions=True)
        for _, writer in list(self.sessions.values()):
            writer.close()
        tasks = [t for t, _ in self.sessions.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.sessions) >= MAX_SESSIONS:
            log.warning("smpp %s: outbind refused: %d connections already", self.gateway, MAX_SESSIONS)
            writer.close()
            return
        name = f"{self.gateway}/outbind{next(self._numbers)}:receiver"
        session = Session(name, "receiver", self.settings, self.on_deliver, self.on_state, self.clock)
        task = asyncio.current_task()
        assert task is not None
        self.sessions[session] = (task, writer)
        try:
            await session.serve_outbind(reader, writer, *self.expect)
        finally:
            self.sessions.pop(session, None)

    def health(self) -> dict[str, object]:
        return {"listening": f"{self.listen[0]}:{self.port}",
                "binds": {s.name: s.health() for s in self.sessions}}  # fmt: skip
