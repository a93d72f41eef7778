"""python smpplib (which nobody at Parley wrote) as an ESME binding into Parley's SMPP server.

smpplib is blocking: each call runs in a thread (``asyncio.to_thread``) so the server, in the
test's event loop, answers meanwhile. Responses and deliver_sm are collected as they are read.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any

import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.smpp


@dataclass
class Delivered:
    esm_class: int
    text: str
    receipted_message_id: str
    message_state: int | None
    source: str
    dest: str


@dataclass
class Esme:
    client: smpplib.client.Client
    responses: list[Any] = field(default_factory=list)
    delivered: list[Delivered] = field(default_factory=list)
    #: The status each deliver_sm is answered with.
    answer: int = 0

    @classmethod
    async def bind(
        cls, port: int, mode: str = "transceiver", system_id: str = "acme", password: str = "secret",
        ssl_context: ssl.SSLContext | None = None,
    ) -> Esme:  # fmt: skip
        """Connect and bind; raises smpplib.exceptions.PDUError (``.args[1]`` the status) when refused."""
        client = smpplib.client.Client(
            "127.0.0.1", port, timeout=5, ssl_context=ssl_context, allow_unknown_opt_params=True
        )
        esme = cls(client)
        client.set_message_sent_handler(lambda pdu, **kw: esme.responses.append(pdu))
        client.set_error_pdu_handler(lambda pdu: esme.responses.append(pdu))
        client.set_message_received_handler(esme._received)

        def go() -> None:
            client.connect()
            try:
                getattr(client, f"bind_{mode}")(system_id=system_id, password=password)
            except BaseException:
                client.disconnect()
                raise

        await asyncio.to_thread(go)
        return esme

    def _received(self, pdu: Any, **kw: Any) -> int:
        raw = pdu.short_message or b""
        rid = getattr(pdu, "receipted_message_id", None) or b""
        self.delivered.append(
            Delivered(
                esm_class=int(pdu.esm_class or 0), text=raw.decode("latin-1"),
                receipted_message_id=(rid.decode() if isinstance(rid, bytes) else str(rid)).rstrip("\0"),
                message_state=getattr(pdu, "message_state", None),
                source=_s(pdu.source_addr), dest=_s(pdu.destination_addr),
            )
        )  # fmt: skip
        return self.answer

    async def submit_raw(self, to: str, data: bytes, **extra: Any) -> tuple[int, str]:
        """One submit_sm of ``data`` as it is (a UDH and its part, say)."""
        return await self.submit(to, data, **extra)

    async def submit(
        self, to: str, text: str | bytes, *, source: str = "ACME", rd: int = 1, **extra: Any
    ) -> tuple[int, str]:
        """One submit_sm; (its resp's status, message id)."""
        data = text.encode() if isinstance(text, str) else text

        def go() -> tuple[int, str]:
            before = len(self.responses)
            self.client.send_message(
                source_addr_ton=5 if not source.isdigit() else 1, source_addr=source, dest_addr_ton=1,
                dest_addr_npi=1, destination_addr=to.removeprefix("+"), short_message=data,
                registered_delivery=rd, **extra,
            )  # fmt: skip
            while len(self.responses) == before:
                self.client.read_once()
            resp = self.responses[-1]
            return int(resp.status), _s(getattr(resp, "message_id", b"") or b"")

        return await asyncio.to_thread(go)

    async def next_delivered(self, timeout: float = 10.0) -> Delivered:
        """The next deliver_sm (answered with ``answer``)."""

        def go() -> Delivered:
            while not self.delivered:
                self.client.read_once()
            return self.delivered.pop(0)

        return await asyncio.wait_for(asyncio.to_thread(go), timeout)

    async def unbind(self) -> None:
        def go() -> None:
            self.client.unbind()
            self.client.disconnect()

        await asyncio.to_thread(go)

    async def drop(self) -> None:
        """Close the socket without unbinding (the ESME went away)."""
        await asyncio.to_thread(self.client.disconnect)


def _s(v: Any) -> str:
    return v.decode("latin-1") if isinstance(v, bytes) else str(v or "")


def status_of(exc: smpplib.exceptions.PDUError) -> int:
    return int(exc.args[1])
