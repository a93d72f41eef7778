"""Send-pipeline benchmark: reply-lane latency idle and behind a bulk backlog, rate on the wire.

What runs (all on 127.0.0.1, all on this machine's cores, in one process unless said):
- a private redis-server (no persistence), started here;
- Parley's send pipeline for one ``type: http`` connector at a fixed ``rate`` (segments/s),
  the same Sender, Pacer and circuit breaker as ``parley run`` (no worker: the messages are
  written into the lanes as a turn's commit would write them, so only the pipeline is timed);
- the far edge: a stub provider that timestamps every message it receives.

Method:
1. Idle: reply-lane messages (each to its own contact) at ``--reply-rate`` per second for
   ``--seconds``; a message's latency is from the moment it was written to its lane to the
   moment the provider received it.
2. Backlog: ``--backlog`` bulk messages (a journey to as many contacts) are written into the bulk
   lane; while they drain at the connector's rate, reply-lane messages are offered again as in 1.
3. Rate accuracy: every message the provider received during step 2 (bulk and replies share the
   rate) -> the most in any one-second window (sliding over arrivals: any alignment), the mean
   rate and its % of the configured one, and the slots given up because a send was too late.

Writes ``bench-results/gateways-<time>.json`` (and ``gateways-latest.json``) and prints a table.

    python loadtests/bench_gateways.py [--backlog 100000] [--rate 500] [--reply-rate 10] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from bench import machine  # loadtests/bench.py (this directory is on sys.path when run as a script)
from rich.console import Console
from rich.table import Table

from engine.app.runtime import Runtime
from engine.app.settings import load_config
from engine.core import keys
from engine.core.redis_embedded import EmbeddedRedis
from gateways.simulators.http_carrier import SimulatedCarrier

ROOT = Path(__file__).resolve().parent.parent
console = Console(stderr=True)


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0}
    s = sorted(samples)

    def p(q: float) -> float:
        return round(s[min(len(s) - 1, int(q / 100 * len(s)))], 2)

    return {"n": len(s), "p50": p(50), "p90": p(90), "p99": p(99), "max": round(s[-1], 2)}


def busiest_second(times: list[float]) -> int:
    """The most arrivals in any one-second window, whatever its alignment: the busiest one
    can be taken to end at an arrival, so [t - 1 s, t] for each arrival t (both ends counted)."""
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


def record(i: int, contact: str, text: str, now_ms: int) -> bytes:
    rec = {
        "id": f"out-b-{i}", "dir": "out", "text": text, "to": contact, "gateway": "carrier",
        "status": "queued", "at": now_ms, "history": [["queued", now_ms]],
    }  # fmt: skip
    return orjson.dumps(rec)


def lane_of(contact: str, lane: str, shards: int) -> str:
    """The lane of ``contact``'s shard, as a turn's commit writes it."""
    return keys.outbound_stream(keys.shard_of(contact, shards), "carrier", lane)


async def offer_replies(
    r: aioredis.Redis, carrier: SimulatedCarrier, rate: float, seconds: float, tag: str, shards: int = 8
) -> list[float]:
    """Reply-lane messages at ``rate``/s for ``seconds``; returns each one's latency (ms)."""
    n = int(rate * seconds)
    start = time.perf_counter()
    sent: dict[str, float] = {}
    for i in range(n):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        contact = f"+44780{tag}{i:05d}"
        now_ms = int(time.time() * 1000)
        mid = f"out-r{tag}-{i}"
        async with r.pipeline(transaction=False) as pipe:
            records = keys.message_records(contact, keys.shard_of(contact, shards))
            pipe.hset(records, mid, record(i, contact, "Thanks! What made it a 9?", now_ms))
            entry = {"m": mid, "c": contact, "t": "Thanks! What made it a 9?", "r": "", "q": now_ms}
            pipe.xadd(lane_of(contact, "reply", shards), entry)
            sent[contact] = time.perf_counter()
            await pipe.execute()
    latencies = []
    for contact, t0 in sent.items():
        msg = await carrier.next_message(contact, timeout=60)
        latencies.append((msg.at - t0) * 1000)
    return latencies


async def load_backlog(r: aioredis.Redis, n: int, shards: int = 8) -> None:
    text = "Hi, your order has shipped. Track it at https://example.com/t/123456"
    now_ms = int(time.time() * 1000)
    for lo in range(0, n, 2000):
        async with r.pipeline(transaction=False) as pipe:
            for i in range(lo, min(n, lo + 2000)):
                contact = f"+4477{i:08d}"
                shard = keys.shard_of(contact, shards)
                mid = f"out-b-{i}"
                pipe.hset(keys.message_records(contact, shard), mid, record(i, contact, text, now_ms))
                entry = {"m": mid, "c": contact, "t": text, "r": "", "q": now_ms}
                pipe.xadd(lane_of(contact, "bulk", shards), entry)
            await pipe.execute()


async def bulk_left(r: aioredis.Redis, shards: int) -> int:
    """Messages still in the bulk lanes of every shard."""
    return sum([await r.xlen(keys.outbound_stream(s, "carrier", "bulk")) for s in range(shards)])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="parley-bench-gw-") as tmp:
        async with EmbeddedRedis(Path(tmp), persistent=False) as redis_server, SimulatedCarrier() as carrier:
            cfg = load_config(
                env={},
                overrides={
                    "redis": {"url": redis_server.url, "max_connections": 64},
                    "engine": {"flows_dir": str(ROOT / "rules")},
                    "gateways": {
                        "carrier": {
                            "type": "http", "url": carrier.url, "rate": args.rate, "concurrency": 32,
                            "max_age": "24h",
                        }
                    },
                },
            )  # fmt: skip
            async with Runtime(cfg, http=False, worker=False) as rt:
                r = rt.store.redis
                console.print(f"idle: replies at {args.reply_rate}/s for {args.seconds:g}s")
                shards = rt.config.engine.shards
                idle = await offer_replies(r, carrier, args.reply_rate, args.seconds, "1", shards)
                console.print(f"loading {args.backlog:,} bulk messages into the bulk lane")
                t_load = time.perf_counter()
                await load_backlog(r, args.backlog, shards)
                load_s = time.perf_counter() - t_load
                mark = len(carrier.received)
                t0 = time.perf_counter()
                console.print(
                    f"backlog: replies at {args.reply_rate}/s for {args.seconds:g}s while it drains"
                )
                busy = await offer_replies(r, carrier, args.reply_rate, args.seconds, "2", shards)
                t1 = time.perf_counter()
                arrivals = sorted(m.at for m in carrier.received[mark:] if t0 <= m.at <= t1)
                left = await bulk_left(r, rt.config.engine.shards)
                rebooked = rt.senders["carrier"].pacer.rebooked
    window = (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else 0.0
    mean = (len(arrivals) - 1) / window if window else 0.0
    return {
        "parameters": {
            "backlog": args.backlog, "rate": args.rate, "reply_rate": args.reply_rate,
            "seconds": args.seconds,
        },
        "machine": machine(),
        "reply_latency_ms_idle": percentiles(idle),
        "reply_latency_ms_with_backlog": percentiles(busy),
        "backlog_load_seconds": round(load_s, 2),
        "backlog_left_at_end": left,
        "rate": {
            "configured_per_s": args.rate,
            "mean_per_s": round(mean, 1), "mean_pct_of_rate": round(100 * mean / args.rate, 2),
            "max_in_any_1s_window": busiest_second(arrivals), "slots_rebooked_late": rebooked,
            "messages_in_window": len(arrivals),
        },
    }  # fmt: skip


def report(result: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"gateways-{stamp}.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    (out_dir / "gateways-latest.json").write_bytes(path.read_bytes())
    p = result["parameters"]
    table = Table(
        title=f"Reply lane latency (ms): idle vs behind {p['backlog']:,} bulk messages at {p['rate']}/s"
    )
    for col in ("", "n", "p50", "p90", "p99", "max"):
        table.add_column(col, justify="right")
    for label, key in (("idle", "reply_latency_ms_idle"), ("with backlog", "reply_latency_ms_with_backlog")):
        s = result[key]
        table.add_row(label, str(s["n"]), *(str(s.get(k, "-")) for k in ("p50", "p90", "p99", "max")))
    out = Console(width=120)
    out.print(table)
    rate = result["rate"]
    out.print(
        f"rate: configured {rate['configured_per_s']}/s, mean {rate['mean_per_s']}/s "
        f"({rate['mean_pct_of_rate']}%), most in any one-second window {rate['max_in_any_1s_window']}, "
        f"slots rebooked late {rate['slots_rebooked_late']}; backlog left {result['backlog_left_at_end']:,}"
    )
    out.print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--backlog", type=int, default=100_000, help="bulk messages queued (default 100,000)")
    p.add_argument("--rate", type=float, default=500, help="the connector's rate, segments/s (default 500)")
    p.add_argument("--reply-rate", type=float, default=10, help="reply-lane messages per second (default 10)")
    p.add_argument("--seconds", type=float, default=20, help="seconds per phase (default 20)")
    p.add_argument("--out", default=str(ROOT / "bench-results"))
    args = p.parse_args(argv)
    import uvloop

    result = uvloop.run(run(args))
    report(result, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
