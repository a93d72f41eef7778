"""The connectors' HTTP client (gateways/http_client.py) against servers we did not write: aiohttp's
server (keep-alive, chunked answers, a server that closes idle connections) and the standard
library's http.server (HTTP/1.0: the body ends when the connection closes), plus raw sockets for
the failures the send pipeline tells apart (refused, cut mid-answer, too slow)."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
from aiohttp import web

from gateways.http_client import ConnectFailed, Disconnected, HttpClient
from tests.conftest import serve


def client(limit: int = 8, timeout: float = 5.0) -> HttpClient:
    return HttpClient({"User-Agent": "parley"}, limit=limit, timeout=timeout, connect_timeout=2.0)


class Peers:
    """Which client connections (their ports) the server saw, and how many at once."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.now = 0
        self.most = 0

    async def echo(self, request: web.Request) -> web.Response:
        self.ports.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(float(request.query.get("wait", "0")))
            body = await request.read()
            return web.json_response(
                {"got": body.decode(), "ct": request.headers.get("Content-Type", ""),
                 "host": request.headers["Host"], "ua": request.headers.get("User-Agent")}
            )  # fmt: skip
        finally:
            self.now -= 1


async def chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for part in (b'{"id":', b'"', b"abc" * 2000, b'"}'):
        await resp.write(part)
        await asyncio.sleep(0.001)
    await resp.write_eof()
    return resp


@pytest.fixture
async def peers() -> AsyncIterator[tuple[str, Peers]]:
    p = Peers()
    async with serve(("POST", "/send", p.echo), ("GET", "/chunked", chunked)) as url:
        yield url, p


async def test_requests_reuse_one_keep_alive_connection_and_send_what_was_asked(
    peers: tuple[str, Peers],
) -> None:
    url, p = peers
    async with client() as c:
        for i in range(20):
            r = await c.request("POST", f"{url}/send", data=f'{{"n":{i}}}'.encode(), headers={"X-N": str(i)})
            assert r.status == 200 and r.headers["content-type"].startswith("application/json")
            assert orjson.loads(r.body)["got"] == f'{{"n":{i}}}'

        form = await c.request("POST", f"{url}/send", data={"To": "+44 7700", "Body": "a&b=c"})
    assert len(set(p.ports)) == 1  # one connection for every request, one after another
    seen = orjson.loads(form.body)
    assert seen["got"] == "To=%2B44+7700&Body=a%26b%3Dc" and seen["ua"] == "parley"
    assert seen["ct"] == "application/x-www-form-urlencoded" and seen["host"] == url.removeprefix("http://")


async def test_concurrent_requests_open_no_more_connections_than_the_limit(peers: tuple[str, Peers]) -> None:
    url, p = peers
    async with client(limit=3) as c:
        answers = await asyncio.gather(
            *(c.request("POST", f"{url}/send?wait=0.02", data=b"x") for _ in range(30))
        )
    assert [a.status for a in answers] == [200] * 30
    assert p.most == 3 and len(set(p.ports)) == 3


async def test_a_chunked_answer_is_read_whole(peers: tuple[str, Peers]) -> None:
    url, _ = peers
    async with client() as c:
        for _ in range(3):  # and the connection stays usable after it
            r = await c.request("GET", f"{url}/chunked")
            assert r.body == b'{"id":"' + b"abc" * 2000 + b'"}'


@pytest.fixture
def http10() -> Iterator[str]:
    """The standard library's server: HTTP/1.0, no Content-Length, closes after each answer."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(201)
            self.end_headers()
            self.wfile.write(b'{"echo":"' + body + b'"}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_an_http_1_0_answer_without_length_ends_with_the_connection(http10: str) -> None:
    async with client() as c:
        for i in range(5):
            r = await c.request("POST", f"{http10}/x", data=str(i).encode())
            assert (r.status, r.body) == (201, b'{"echo":"%d"}' % i)


WRITERS: list[asyncio.StreamWriter] = []


async def raw_server(answer: bytes | None, *, close: bool = True) -> tuple[asyncio.Server, str, list[bytes]]:
    """A socket server that reads a request, writes ``answer`` (None: nothing) and closes."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        WRITERS.append(writer)
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        if answer is not None:
            writer.write(answer)
            await writer.drain()
        if close:
            writer.close()
        else:
            await asyncio.sleep(10)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", seen


async def test_failures_are_told_apart_as_the_send_pipeline_needs() -> None:
    async with client(timeout=0.3) as c:
        server, url, _ = await raw_server(None)
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectFailed, match="cannot connect"):
            await c.request("POST", f"{url}/send", data=b"x")  # nothing listens: not sent

        cut, url, seen = await raw_server(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"id":')
        with pytest.raises(Disconnected, match="before the whole answer"):
            await c.request("POST", f"{url}/send", data=b"x")  # taken, maybe: ambiguous
        assert len(seen) == 1

        slow, url, _ = await raw_server(None, close=False)
        with pytest.raises(TimeoutError):
            await c.request("POST", f"{url}/send", data=b"x")
        garbage, url, _ = await raw_server(b"SMTP ready\r\n\r\n")
        with pytest.raises(Disconnected, match=r"not an HTTP/1\.x status line"):
            await c.request("POST", f"{url}/send", data=b"x")
        for s in (cut, slow, garbage):
            s.close()
        for w in WRITERS:
            w.close()


async def test_a_connection_the_server_closed_while_idle_is_not_used_again() -> None:
    """aiohttp's server closes keep-alive connections idle for ``keepalive_timeout``: the next
    request opens a new connection and succeeds instead of failing on the dead one."""
    p = Peers()
    app = web.Application()
    app.router.add_post("/send", p.echo)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=0.05)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with client() as c:
            assert (await c.request("POST", f"{url}/send", data=b"1")).status == 200
            await asyncio.sleep(0.2)  # the server's idle timeout passes (a real server's clock)
            assert (await c.request("POST", f"{url}/send", data=b"2")).status == 200
        assert len(set(p.ports)) == 2
    finally:
        await runner.cleanup()
