"""What ``redis.wait_replicas`` costs: intake latency with WAIT and without, against a local replica.

Starts a private redis-server primary and one replica of it (loopback, no persistence), then
calls ``accept_inbound`` (the intake every connector and webhook uses: the script, the WAIT
when configured, in one round trip) with ``wait_replicas`` 0 and 1:

- ``sequential``: one text at a time, as a single peer connection that waits for each answer;
- ``concurrent``: ``--peers`` texts in flight at once (webhooks answered side by side): their
  writes are coalesced into one pipeline, which ends with one WAIT for them all.

Prints p50/p99 (ms) and texts/s per case, and the JSON of them all. Run alone:
``python loadtests/wait_latency.py [--texts 3000] [--peers 32]``. On a machine shared with
other work the figures move; compare the cases of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.app.runtime import Runtime  # noqa: E402
from engine.app.settings import load_config  # noqa: E402
from engine.conversation.intake import accept_inbound  # noqa: E402
from engine.core.redis_embedded import free_port  # noqa: E402


def _server(tmp: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    (tmp / str(port)).mkdir()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--dir", str(tmp / str(port)), "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0",
         *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(500):
        try:
            with redis.Redis(port=port) as c:
                c.ping()
                return proc, port
        except redis.ConnectionError:
            time.sleep(0.01)
    raise RuntimeError("redis-server did not start")


def _synced(port: int) -> None:
    with redis.Redis(port=port) as c:
        for _ in range(1000):
            info = c.info("replication")
            if info.get("slave0", {}).get("state") == "online":
                return
            time.sleep(0.01)
    raise RuntimeError("replica did not sync")


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 3)


async def _case(port: int, replicas: int, texts: int, peers: int, offset: int) -> dict[str, Any]:
    cfg = load_config(
        env={},
        overrides={
            "redis": {"url": f"redis://127.0.0.1:{port}/0", "wait_replicas": replicas},
            "engine": {"flows_dir": str(ROOT / "rules"), "shards": 8},
            "gateways": {"carrier": {"type": "http", "url": "http://127.0.0.1:9/send", "sender": "1234"}},
        },
    )
    out: dict[str, Any] = {"wait_replicas": replicas}
    async with Runtime(cfg, http=False, worker=False, senders=False) as rt:

        async def one(i: int) -> float:
            t0 = time.perf_counter()
            await accept_inbound(
                rt, gateway="carrier", contact=f"+4477{i % 100_000:08d}", to="1234", text="9",
                provider_id=f"w{replicas}-{offset + i}",
            )  # fmt: skip
            return time.perf_counter() - t0

        for i in range(200):  # warm up: connections, scripts
            await one(-1 - i)
        seq = [await one(i) for i in range(texts)]
        t0 = time.perf_counter()
        conc: list[float] = []
        todo = iter(range(texts, 2 * texts))

        async def peer() -> None:
            for i in todo:
                conc.append(await one(i))

        await asyncio.gather(*(peer() for _ in range(peers)))
        took = time.perf_counter() - t0
    out["sequential"] = {
        "p50_ms": _pct(seq, 0.5),
        "p99_ms": _pct(seq, 0.99),
        "per_s": round(len(seq) / sum(seq)),
    }
    rate = round(len(conc) / took)
    out["concurrent"] = {"peers": peers, "p50_ms": _pct(conc, 0.5), "p99_ms": _pct(conc, 0.99), "per_s": rate}
    return out


async def measure(texts: int, peers: int, rounds: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="parley-wait-") as tmp:
        primary, port = _server(Path(tmp))
        replica, _ = _server(Path(tmp), "--replicaof", "127.0.0.1", str(port))
        try:
            _synced(port)
            results = []
            for r in range(rounds):  # alternate, so a busy moment of the machine hits both
                for n in (0, 1):
                    results.append(await _case(port, n, texts, peers, offset=r * 10 * texts))
                    with redis.Redis(port=port) as c:
                        c.flushdb()
            return results
        finally:
            for p in (replica, primary):
                p.kill()
                p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--texts", type=int, default=3000)
    ap.add_argument("--peers", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    results = asyncio.run(measure(a.texts, a.peers, a.rounds))
    for r in results:
        s, c = r["sequential"], r["concurrent"]
        print(
            f"wait_replicas={r['wait_replicas']}: sequential p50 {s['p50_ms']} ms p99 {s['p99_ms']} ms "
            f"({s['per_s']}/s); {c['peers']} peers p50 {c['p50_ms']} ms p99 {c['p99_ms']} ms ({c['per_s']}/s)"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
