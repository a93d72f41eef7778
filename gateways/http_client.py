"""The HTTP/1.1 client the HTTP connectors send with: keep-alive connections, nothing else.

Why not aiohttp's client (the stack's HTTP library, still the server): a provider send is the
hottest call of the sender, one per message, and aiohttp's client costs about four times what
this one does per request (measured: ``loadtests/http_client_cpu.py``, CPU per POST round trip
against the same stub in another process; figures in docs/BENCHMARKS.md). A connector needs
much less than a general client: one request at a time per connection (no pipelining: a
connection that fails mid-request makes only that request ambiguous), a pool of keep-alive
connections per host bounded by the connector's concurrency, ``http`` and ``https``,
Content-Length, chunked and read-until-close bodies, a total timeout and a connect timeout. No
redirects (a provider's send API does not redirect; a 3xx is reported as what it is), no
proxies, no cookies.

Failures are told apart the way the send pipeline needs (gateways/http_common.py turns them into
its vocabulary):

- :class:`ConnectFailed`: no connection (refused, unknown host, connect timeout): the request
  never left, *not* taken;
- ``TimeoutError``: no whole answer within the total timeout: ambiguous;
- :class:`Disconnected`: the connection broke after the request was (being) written: ambiguous.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlencode, urlsplit

#: Idle keep-alive connections older than this are closed instead of reused (providers' servers
#: commonly close idle connections after 5-75 s; reusing one they just closed fails the send).
IDLE_S = 15.0


class ConnectFailed(Exception):
    """No connection could be made: the request was not sent."""


class Disconnected(Exception):
    """The connection broke after the request was written (or while writing it)."""


@dataclass(frozen=True)
class Response:
    status: int
    #: Header names lower-cased; repeated headers joined with ", ".
    headers: dict[str, str]
    body: bytes


class _Conn(asyncio.Protocol):
    """One connection: writes a request, parses its one answer."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.answer: asyncio.Future[tuple[Response, bool]] | None = None
        self.closed = False
        self.idle_since = 0.0
        self._head: tuple[int, dict[str, str], bool] | None = None  # status, headers, keep-alive
        self._length: int | None = None  # Content-Length; None: chunked or until close
        self._chunked = False
        self._no_body = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, request: bytes, no_body: bool) -> asyncio.Future[tuple[Response, bool]]:
        assert self.transport is not None
        self.answer = self.loop.create_future()
        self.buf.clear()
        self._head, self._length, self._chunked, self._no_body = None, None, False, no_body
        self.transport.write(request)
        return self.answer

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.answer is None or self.answer.done():
            return
        try:
            done = self._parse()
        except ValueError as exc:
            self.answer.set_exception(Disconnected(f"unreadable answer: {exc}"))
            self.close()
            return
        if done is not None:
            self.answer.set_result(done)

    def _parse(self) -> tuple[Response, bool] | None:
        while self._head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    raise ValueError("answer head longer than 64 KiB")
                return None
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            del self.buf[: end + 4]
            version, _, rest = lines[0].partition(" ")
            if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
                raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
            status = int(rest[:3])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    raise ValueError(f"malformed header line {line[:80]!r}")
                key, value = name.strip().lower(), value.strip()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
            if 100 <= status < 200:
                continue  # an interim answer (100 Continue): the real one follows
            conn = headers.get("connection", "").lower()
            keep = "close" not in conn and (version == "HTTP/1.1" or "keep-alive" in conn)
            if self._no_body or status in (204, 304):
                self._length = 0
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                self._chunked = True
            elif "content-length" in headers:
                self._length = int(headers["content-length"])
            else:
                keep = False  # the body ends when the server closes the connection
            self._head = (status, headers, keep)
        status, headers, keep = self._head
        if self._chunked:
            body = self._dechunk()
            if body is None:
                return None
        elif self._length is not None:
            if len(self.buf) < self._length:
                return None
            body = bytes(self.buf[: self._length])
            del self.buf[: self._length]
        else:
            return None  # until close: connection_lost finishes it
        return Response(status, headers, body), keep

    def _dechunk(self) -> bytes | None:
        """The whole chunked body once it is all in the buffer (then removed from it), else None."""
        pos, parts = 0, list[bytes]()
        while True:
            eol = self.buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(self.buf[pos:eol]).split(b";")[0].strip() or b"x", 16)
            if size == 0:
                end = self.buf.find(b"\r\n\r\n", eol)  # (no) trailers, then the blank line
                if end < 0 and self.buf[eol : eol + 4] != b"\r\n\r\n":
                    return None
                del self.buf[: (end if end >= 0 else eol) + 4]
                return b"".join(parts)
            start = eol + 2
            if len(self.buf) < start + size + 2:
                return None
            parts.append(bytes(self.buf[start : start + size]))
            pos = start + size + 2

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.answer is None or self.answer.done():
            return
        if self._head is not None and self._length is None and not self._chunked:
            status, headers, _ = self._head
            self.answer.set_result((Response(status, headers, bytes(self.buf)), False))
        else:
            why = f": {exc}" if exc else ""
            self.answer.set_exception(Disconnected(f"connection closed before the whole answer{why}"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpClient:
    """``async with HttpClient(headers, limit, timeout):`` then ``await client.request(...)``."""

    def __init__(
        self, headers: dict[str, str], *, limit: int, timeout: float, connect_timeout: float
    ) -> None:
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._slots = asyncio.Semaphore(max(1, limit))
        self._idle: dict[tuple[str, str, int], deque[_Conn]] = {}
        self._busy: set[_Conn] = set()
        self._ssl: ssl.SSLContext | None = None

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        for conn in self._busy:
            conn.close()
        await asyncio.sleep(0)  # let the transports close

    async def request(
        self,
        method: str,
        url: str,
        *,
        data: bytes | dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ConnectFailed(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if scheme == "https" else 80)
        host = parts.hostname
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        extra = ""
        if isinstance(data, dict):
            body = urlencode(data).encode()
            extra = "Content-Type: application/x-www-form-urlencoded\r\n"
        else:
            body = data or b""
        for k, v in (headers or {}).items():
            extra += f"{k}: {v}\r\n"
        authority = host if port == (443 if scheme == "https" else 80) else f"{host}:{port}"
        if ":" in host:  # an IPv6 literal
            authority = f"[{host}]" if authority == host else f"[{host}]:{port}"
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\n{self.headers}{extra}"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        request = head.encode("latin-1") + body
        async with asyncio.timeout(self.timeout if timeout is None else timeout):
            async with self._slots:
                conn = await self._connection(scheme, host, port, timeout)
                self._busy.add(conn)
                kept = False
                try:
                    answer, keep = await conn.send(request, no_body=method == "HEAD")
                    if keep and not conn.closed:
                        conn.idle_since = asyncio.get_running_loop().time()
                        self._idle.setdefault((scheme, host, port), deque()).append(conn)
                        kept = True
                    return answer
                finally:
                    self._busy.discard(conn)
                    if not kept:
                        conn.close()  # a timeout, a failure or the server's close: never reused

    async def _connection(self, scheme: str, host: str, port: int, timeout: float | None) -> _Conn:
        idle = self._idle.get((scheme, host, port))
        loop = asyncio.get_running_loop()
        while idle:
            conn = idle.pop()  # the most recently used: the likeliest to be open still
            if not conn.closed and loop.time() - conn.idle_since < IDLE_S:
                return conn
            conn.close()
        if scheme == "https" and self._ssl is None:
            self._ssl = ssl.create_default_context()
        limit = min(self.connect_timeout, self.timeout if timeout is None else timeout)
        try:
            async with asyncio.timeout(limit):
                _, conn = await loop.create_connection(
                    lambda: _Conn(loop), host, port,
                    ssl=self._ssl if scheme == "https" else None,
                    server_hostname=host if scheme == "https" else None,
                )  # fmt: skip
        except TimeoutError:
            raise ConnectFailed(f"connect to {host}:{port} timed out after {limit:g}s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {exc}") from exc
        return conn
