"""A lean HTTP/1.1 client and stub server for the benchmark harness.

The harness shares the machine's cores with Parley (2 on the reference machine): every
microsecond it spends is taken from the engine it measures. aiohttp costs about 117 us of CPU
per POST round trip (client and server together); at 3,000 texts/s in and 3,000 replies out
that is 0.7 of a core for the harness alone. These speak just enough HTTP/1.1 for the
benchmark, over keep-alive connections, at a few microseconds per message:

- :class:`Pool`: ``await pool.post(path, body)`` -> status; requests are pipelined on a fixed
  number of keep-alive connections (answers come back in order on each), so a burst needs no
  new connections and no per-request task switching beyond one future.
- :class:`StubServer`: answers every POST with a fixed-shape JSON body after handing the request
  body to a callback; keep-alive and pipelined requests; Content-Length bodies only (what
  Parley's HTTP connector sends).

Neither is a general HTTP implementation: no chunked encoding, no redirects, no TLS. They are
not used by Parley itself, only by loadtests/.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from typing import cast


def _next_message(buf: bytearray) -> tuple[bytes, bytes] | None:
    """The first whole HTTP/1.1 message in ``buf`` (head, body), removed from it; None if the
    buffer does not hold one yet. Content-Length bodies only."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    total = end + 4 + length
    if len(buf) < total:
        return None
    body = bytes(buf[end + 4 : total])
    del buf[:total]
    return head, body


class _ClientConn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[int]] = deque()
        self.buf = bytearray()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (message := _next_message(self.buf)) is not None:
            status = int(message[0][9:12])
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        err = ConnectionError(f"connection lost: {exc}")
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(err)
        if not self.lost.done():
            self.lost.set_result(None)


class Pool:
    """``async with Pool(host, port, headers, size) as pool: status = await pool.post(path, body)``."""

    def __init__(self, host: str, port: int, headers: dict[str, str], size: int = 32) -> None:
        self.host, self.port, self.size = host, port, size
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._head = f"Host: {host}:{port}\r\n{extra}Content-Type: application/json\r\n".encode()
        self._conns: list[_ClientConn] = []
        self._next = itertools.cycle(range(size))

    async def __aenter__(self) -> Pool:
        loop = asyncio.get_running_loop()
        for _ in range(self.size):
            _, proto = await loop.create_connection(_ClientConn, self.host, self.port)
            self._conns.append(proto)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for c in self._conns:
            if c.transport is not None:
                c.transport.close()

    async def post(self, path: str, body: bytes) -> int:
        """POST ``body`` to ``path`` on the least busy of a few connections; the status code."""
        conn = min((self._conns[next(self._next)] for _ in range(2)), key=lambda c: len(c.waiting))
        if conn.transport is None or conn.transport.is_closing():
            idx = self._conns.index(conn)
            _, conn = await asyncio.get_running_loop().create_connection(_ClientConn, self.host, self.port)
            self._conns[idx] = conn
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        conn.waiting.append(fut)
        assert conn.transport is not None
        head = b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n" % (path.encode(), self._head, len(body))
        conn.transport.write(head + body)
        return await fut


class _ServerConn(asyncio.Protocol):
    def __init__(self, on_body: Callable[[bytes], bytes]) -> None:
        self.on_body = on_body
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out: list[bytes] = []
        while (message := _next_message(self.buf)) is not None:
            answer = self.on_body(message[1])
            out.append(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(answer), answer)
            )
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


class StubServer:
    """``async with StubServer(on_body) as s:`` listens on 127.0.0.1:``s.port``; ``on_body(body)``
    returns the JSON answer's bytes (status 200)."""

    def __init__(self, on_body: Callable[[bytes], bytes], port: int = 0) -> None:
        self.on_body = on_body
        self.port = port
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> StubServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ServerConn(self.on_body), "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
