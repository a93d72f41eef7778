"""SMPP server benchmark: ESMEs binding into Parley, submit_sm accepted per second, receipts on.

What runs (all on 127.0.0.1, all on this machine's cores):
- a private redis-server (no persistence), started here;
- Parley: a real ``parley run`` (its own process; ``--workers`` worker processes) with
  ``smpp_server`` listening, one account (``bench``: throughput far above the offered load, so the
  account's limit is never what is measured) and one ``type: smpp`` connector, 2 transceiver
  binds, window 100, to
- the simulated SMSC (happy mode, latency 0, a receipt per message), in this process, and
- the ESMEs: ``--binds`` transceiver binds into Parley, written here on asyncio (a small raw
  client: bind, then submit_sm with registered_delivery 1 keeping ``--window`` unanswered per
  bind, for ``--seconds``; every deliver_sm answered ESME_ROK at once).

Reported: submit_sm answered ESME_ROK per second in total and per bind (closed loop: as fast as
Parley answers), p50/p99/max from writing a submit_sm to reading its submit_sm_resp, statuses
other than ESME_ROK, and the receipts that came back as deliver_sm within ``--drain`` seconds
after the last submit (each submitted message's receipt goes SMSC -> Parley's connector -> the
message's status -> the receipt router -> the account's queue -> a bind).

Writes ``bench-results/smpp-server-<time>.json`` and prints a table.

    python loadtests/bench_smpp_server.py [--binds 1,2] [--window 10] [--seconds 10] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from bench import API_KEY, Engine, machine  # loadtests/bench.py (on sys.path when run as a script)
from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.table import Table

from engine.core.passwords import hash_password
from engine.core.redis_embedded import EmbeddedRedis, free_port
from gateways.simulators.smsc import SimulatedSmsc, SmscBehaviour
from gateways.smpp import pdu
from gateways.smpp.pdu import Address, ShortMessage

console = Console()


class Esme:
    """One transceiver bind into Parley, keeping ``window`` submits unanswered."""

    def __init__(self, port: int, window: int, index: int) -> None:
        self.port, self.window, self.index = port, window, index
        self.hist = HdrHistogram(1, 60_000_000, 3)  # us
        self.statuses: Counter[str] = Counter()
        self.receipts = 0
        self._sent: dict[int, float] = {}
        self._free = asyncio.Semaphore(window)
        self._seq = 0
        self._receipt = asyncio.Event()

    async def run(self, until: float, drain_until: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(pdu.bind(pdu.BIND_TRANSCEIVER, 1, system_id="bench", password="secret"))
        resp = await pdu.read_pdu(reader)
        if resp.status != pdu.ESME_ROK:
            raise RuntimeError(f"bind {self.index} refused: {pdu.status_name(resp.status)}")
        read = asyncio.create_task(self._read(reader, writer))
        try:
            n = 0
            while time.monotonic() < until:
                await self._free.acquire()
                self._seq += 1
                n += 1
                to = f"4477{(self.index * 1_000_000 + n) % 100_000_000:08d}"
                sm = ShortMessage(Address("BENCH", 5, 0), Address(to), b"Code 4242", registered_delivery=1)
                self._sent[self._seq] = time.perf_counter()
                writer.write(pdu.encode_sm(pdu.SUBMIT_SM, self._seq, sm))
                await writer.drain()
            while time.monotonic() < drain_until and self.receipts < self.statuses["ESME_ROK"]:
                self._receipt.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._receipt.wait(), 0.1)
        finally:
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await read
            writer.write(pdu.unbind(0x7FFFFFF0))
            writer.close()

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            p = await pdu.read_pdu(reader)
            if p.command_id == pdu.SUBMIT_SM_RESP:
                t0 = self._sent.pop(p.seq, None)
                if t0 is not None:
                    self.hist.record_value(max(1, int((time.perf_counter() - t0) * 1e6)))
                    self.statuses[pdu.status_name(p.status)] += 1
                    self._free.release()
            elif p.command_id == pdu.DELIVER_SM:
                writer.write(pdu.deliver_sm_resp(p.seq))
                self.receipts += 1
                self._receipt.set()
            elif p.command_id == pdu.ENQUIRE_LINK:
                writer.write(pdu.enquire_link_resp(p.seq))


def configure(engine: Engine, smsc_port: int, server_port: int, binds: int, window: int) -> None:
    config = yaml.safe_load(engine.config_path.read_text())
    config["gateways"] = {
        "carrier": {
            "type": "smpp",
            "host": "127.0.0.1",
            "port": smsc_port,
            "system_id": "parley",
            "password": "secret",
            "sender": "12345",
            "binds": 2,
            "window": 100,
            "rate": 20000,
            "registered_delivery": True,
        }
    }
    config["smpp_server"] = {
        "listen": f"127.0.0.1:{server_port}",
        "accounts": [
            {
                "system_id": "bench",
                "password_hash": hash_password("secret"),
                "max_binds": max(binds, 1),
                "throughput": 100_000,
                "window": max(window, 1) * 2,
                "sources": ["BENCH"],
            }
        ],
    }
    engine.config_path.write_text(yaml.safe_dump(config))


async def one_run(args: argparse.Namespace, binds: int, tmp: Path) -> dict[str, Any]:
    server = EmbeddedRedis(tmp / f"redis-{binds}", persistent=False)
    server.start()
    engine: Engine | None = None
    try:
        async with SimulatedSmsc(behaviour=SmscBehaviour(dlr_delay=0.0)) as smsc:
            engine = Engine(server.url, 0, args.workers, tmp)
            server_port = free_port()
            configure(engine, smsc.port, server_port, binds, args.window)
            engine.start()
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as session:
                await engine.ready(session)
            await asyncio.sleep(1.0)  # the connector's binds come up
            esmes = [Esme(server_port, args.window, i) for i in range(binds)]
            t0 = time.monotonic()
            until = t0 + args.seconds
            await asyncio.gather(*(e.run(until, until + args.drain) for e in esmes))
            elapsed = args.seconds
            hist = HdrHistogram(1, 60_000_000, 3)
            statuses: Counter[str] = Counter()
            for e in esmes:
                hist.add(e.hist)
                statuses.update(e.statuses)
            ok = statuses["ESME_ROK"]
            return {
                "binds": binds,
                "window": args.window,
                "seconds": elapsed,
                "accepted": ok,
                "accepted_per_s": round(ok / elapsed, 1),
                "per_bind_per_s": round(ok / elapsed / binds, 1),
                "statuses": dict(statuses),
                "receipts": sum(e.receipts for e in esmes),
                "latency_ms": {
                    q: round(hist.get_value_at_percentile(p) / 1000, 2)
                    for q, p in (("p50", 50), ("p99", 99), ("max", 100))
                },
                "smsc_received": len(smsc.received),
            }
    finally:
        if engine is not None:
            await asyncio.to_thread(engine.stop)
        server.stop()


async def run(args: argparse.Namespace) -> int:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before anything runs
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    result: dict[str, Any] = {
        "machine": machine() | {"note": "the harness, the SMSC, Redis and Parley share the cores"},
        "parameters": {
            "path": "ESME submit_sm -> Parley (gate, routing, SMPP connector) -> SMSC -> receipt "
            "-> deliver_sm to the ESME",
            "workers": args.workers,
            "window": args.window,
            "seconds": args.seconds,
            "receipts": True,
        },
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="parley-bench-smpp-server-") as tmp:
        for binds in args.binds:
            console.print(f"[bold]{binds} bind(s)[/], window {args.window}, {args.seconds:g} s ...")
            result["runs"].append(await one_run(args, binds, Path(tmp)))
    table = Table(title="SMPP server: submit_sm accepted (receipts on)")
    columns = ("binds", "window", "accepted/s", "per bind/s", "p50 ms", "p99 ms", "max ms", "receipts")
    columns += ("other",)
    for col in columns:
        table.add_column(col, justify="right")
    for r in result["runs"]:
        other = {k: v for k, v in r["statuses"].items() if k != "ESME_ROK"}
        lat = r["latency_ms"]
        table.add_row(
            str(r["binds"]),
            str(r["window"]),
            f"{r['accepted_per_s']:,}",
            f"{r['per_bind_per_s']:,}",
            str(lat["p50"]),
            str(lat["p99"]),
            str(lat["max"]),
            f"{r['receipts']:,}/{r['accepted']:,}",
            str(other or "-"),
        )
    console.print(table)
    path = out_dir / f"smpp-server-{stamp}.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    console.print(f"written {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--binds", default="1,2", help="bind counts to run, comma-separated (default 1,2)")
    p.add_argument("--window", type=int, default=10, help="unanswered submits per bind (default 10)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of submits per run (default 10)")
    p.add_argument("--drain", type=float, default=10.0, help="seconds to wait for receipts (default 10)")
    p.add_argument("--workers", type=int, default=1, help="parley run --workers (default 1)")
    p.add_argument("--out", default="bench-results", help="directory for the JSON (default bench-results)")
    args = p.parse_args(argv)
    args.binds = [int(x) for x in str(args.binds).split(",") if x]
    import uvloop

    return uvloop.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
