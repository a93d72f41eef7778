"""CPU per provider send: the connectors' client (gateways/http_client.py) against aiohttp's.

The stub provider runs in its own process (loadtests/wire.py's StubServer), so what is measured
is the client process's CPU alone (``time.process_time``) over N POSTs of a typical send body,
C at a time, each client in a fresh process, the two alternated R times:

    python loadtests/http_client_cpu.py [--requests 20000] [--concurrency 32] [--rounds 3]

Prints each run and the median per client. Where docs/BENCHMARKS.md's figure comes from.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BODY = orjson.dumps(
    {
        "to": "+447700900123",
        "from": "1234",
        "text": "Thanks! What made you give us that score?",
        "id": "out-1",
    }
)


async def stub(port: int) -> None:
    from loadtests import wire

    async with wire.StubServer(lambda body: b'{"id":"h-1"}', port=port):
        await asyncio.Event().wait()


async def measure(kind: str, port: int, n: int, concurrency: int) -> float:
    """Microseconds of this process's CPU per request."""
    url = f"http://127.0.0.1:{port}/send"
    headers = {"User-Agent": "parley", "Content-Type": "application/json"}
    if kind == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=10, sock_connect=5),
            connector=aiohttp.TCPConnector(limit=concurrency, ttl_dns_cache=300),
        )

        async def one(i: int) -> None:
            async with session.request("POST", url, data=BODY, headers={"Idempotency-Key": f"out-{i}"}) as r:
                await r.read()
                {k.lower(): v for k, v in r.headers.items()}

        close = session.close
    else:
        from gateways.http_client import HttpClient

        client = HttpClient(headers, limit=concurrency, timeout=10, connect_timeout=5)

        async def one(i: int) -> None:
            await client.request("POST", url, data=BODY, headers={"Idempotency-Key": f"out-{i}"})

        close = client.close
    gate = asyncio.Semaphore(concurrency)

    async def limited(i: int) -> None:
        async with gate:
            await one(i)

    await asyncio.gather(*(limited(i) for i in range(concurrency * 10)))  # connections open, warm
    t0 = time.process_time()
    await asyncio.gather(*(limited(i) for i in range(n)))
    spent = time.process_time() - t0
    await close()
    return spent / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--stub-port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--client", choices=["aiohttp", "parley"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stub_port and not args.client:
        uvloop.run(stub(args.stub_port))
        return
    if args.client:
        print(uvloop.run(measure(args.client, args.stub_port, args.requests, args.concurrency)))
        return
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--stub-port", str(port)])
    time.sleep(1.0)
    runs: dict[str, list[float]] = {"aiohttp": [], "parley": []}
    try:
        for _ in range(args.rounds):
            for kind in runs:
                out = subprocess.run(
                    [sys.executable, __file__, "--stub-port", str(port), "--client", kind,
                     "--requests", str(args.requests), "--concurrency", str(args.concurrency)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                runs[kind].append(float(out.stdout.strip().splitlines()[-1]))
                print(f"{kind:8} {runs[kind][-1]:7.1f} us CPU per request", flush=True)
    finally:
        server.terminate()
    for kind, values in runs.items():
        print(f"median {kind:8} {statistics.median(values):7.1f} us CPU per request ({len(values)} runs)")


if __name__ == "__main__":
    main()
