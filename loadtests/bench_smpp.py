"""SMPP benchmark: submits per second per bind, and the rate on the wire at a configured TPS.

What runs (all on 127.0.0.1, all on this machine's cores, in one process and one event loop):
- a private redis-server (no persistence), started here;
- Parley's ``type: smpp`` connector (the SmppGateway, its sessions, the PDU codec), inside a
  Runtime with senders only (no worker: nothing but the send side is timed);
- the far edge: the simulated SMSC (``gateways/simulators/smsc.py``), happy mode, latency 0,
  which records when every submit_sm arrived. It shares the event loop with the ESME, so the
  throughput figures are for ESME and SMSC together: a lower bound for the ESME alone.

Method:
1. Throughput: for each binds x window in the matrix, a fresh SMSC and connector (``rate: 0``);
   ``--messages`` single-segment GSM-7 texts are handed straight to ``SmppGateway.send()`` by
   2 x binds x window concurrent callers (so every window stays full). Delivery receipts on by
   default (``registered_delivery``, the SMSC sends one deliver_sm per submit and the ESME looks
   each up in Redis), as they cost the ESME work too. Reported: msgs/s overall and per bind
   (from the first send to the last submit_sm_resp), and submit->resp latency on the gateway's
   side: from the moment the encoded submit_sm is handed to the socket (window already held)
   to the moment its submit_sm_resp is returned to the gateway.
2. Rate accuracy: one ``type: smpp`` connector at ``rate: R`` (each of ``--rate``, default 100
   and 200) through the real send pipeline
   (Sender, Pacer), ``--rate-messages`` bulk messages written into the bulk lane as a turn's
   commit would write them (the helpers of ``bench_gateways.py``). From the SMSC's arrival
   times: the mean rate (and its % of R), the most in any one-second window (sliding over
   arrivals, any alignment; must not exceed R), the least in any full one-second window after
   the first second (smoothness), and the slots given up because a send was too late for its.

Writes ``bench-results/smpp-<time>.json`` (and ``smpp-latest.json``) and prints tables.

    python loadtests/bench_smpp.py [--messages 20000] [--binds 1,2] [--windows 1,10,50]
                                   [--receipts/--no-receipts] [--rate 100,200] [--rate-messages 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from bench import machine  # loadtests/bench.py (this directory is on sys.path when run as a script)
from bench_gateways import bulk_left, busiest_second, load_backlog, percentiles
from rich.console import Console
from rich.table import Table

from engine.app.runtime import Runtime
from engine.app.settings import load_config
from engine.core.redis_embedded import EmbeddedRedis
from gateways.base import OutboundMessage
from gateways.simulators.smsc import Message, SimulatedSmsc, SmscBehaviour
from gateways.smpp.gateway import SmppGateway
from gateways.smpp.pdu import Pdu
from gateways.smpp.session import Session

ROOT = Path(__file__).resolve().parent.parent
TEXT = "Hi, your order has shipped. Track it at https://example.com/t/123456"  # GSM-7, one segment
console = Console(stderr=True)


def quietest_second(times: list[float]) -> int | None:
    """The fewest arrivals in any full window (t, t + 1 s] that starts at least one second after
    the first arrival and ends by the last one (None: the run was shorter than two seconds)."""
    if len(times) < 2 or times[-1] - times[0] < 2.0:
        return None
    first, last = times[0], times[-1]
    worst: int | None = None
    j = 0
    for i, t in enumerate(times):
        if t < first + 1.0:
            continue
        if t + 1.0 > last:
            break
        j = max(j, i)
        while j + 1 < len(times) and times[j + 1] <= t + 1.0:
            j += 1
        n = j - i  # arrivals in (t, t + 1]
        worst = n if worst is None else min(worst, n)
    return worst


def smpp_section(smsc: SimulatedSmsc, **extra: Any) -> dict[str, Any]:
    gw: dict[str, Any] = {
        "type": "smpp", "host": "127.0.0.1", "port": smsc.port, "system_id": "parley",
        "password": "secret", "sender": "12345", "max_age": "24h",
    }  # fmt: skip
    gw.update(extra)
    return gw


def config(redis_url: str, name: str, section: dict[str, Any]) -> Any:
    return load_config(
        env={},
        overrides={
            "redis": {"url": redis_url, "max_connections": 64},
            "engine": {"flows_dir": str(ROOT / "rules")},
            "gateways": {name: section},
        },
    )


async def bound(gw: SmppGateway, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(1 for s in gw.sessions if s.bound.is_set()) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {sum(s.bound.is_set() for s in gw.sessions)} of {n} binds came up")
        await asyncio.sleep(0.01)


def instrument(session: Session, latencies: list[float], per_bind: Counter[str]) -> None:
    """Time each request of ``session`` from the write of its PDU to its response (bench only)."""
    original = session.request

    async def request(build: Callable[[int], bytes]) -> Pdu:
        t0 = 0.0

        def timed(seq: int) -> bytes:
            nonlocal t0
            data = build(seq)
            t0 = time.perf_counter()
            return data

        resp = await original(timed)
        latencies.append((time.perf_counter() - t0) * 1000)
        per_bind[session.name] += 1
        return resp

    session.request = request  # type: ignore[method-assign]


class GcPauses:
    """``with GcPauses() as g``: the cyclic collector's passes meanwhile, by generation (count, ms)."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._t0 = 0.0

    def _cb(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses[info["generation"]].append((time.perf_counter() - self._t0) * 1000)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._cb)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._cb)

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            f"gen{g}": {"n": len(p), "total_ms": round(sum(p), 1), "max_ms": round(max(p, default=0.0), 1)}
            for g, p in self.pauses.items()
        }


async def drained(smsc: SimulatedSmsc, n: int, timeout: float) -> bool:
    """Every receipt sent and answered (or ``timeout`` passed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conns = list(smsc._conns)  # a look at the simulator's open requests (bench only)
        if smsc.stats()["receipts_sent"] >= n and not any(c.pending for c in conns):
            return True
        await asyncio.sleep(0.05)
    return False


async def throughput(redis_url: str, binds: int, window: int, args: argparse.Namespace) -> dict[str, Any]:
    n = args.messages
    behaviour = SmscBehaviour(mode="happy", latency=0.0)
    async with SimulatedSmsc(behaviour=behaviour) as smsc:
        section = smpp_section(
            smsc, binds=binds, window=window, rate=0, registered_delivery=args.receipts
        )  # fmt: skip
        async with Runtime(config(redis_url, "smsc", section), http=False, worker=False) as rt:
            gw = rt.gateways["smsc"]
            assert isinstance(gw, SmppGateway)
            await bound(gw, binds)
            latencies: list[float] = []
            per_bind: Counter[str] = Counter()
            for s in gw.sessions:
                instrument(s, latencies, per_bind)
            errors: Counter[str] = Counter()
            counter = itertools.count()

            async def caller() -> None:
                while (i := next(counter)) < n:
                    m = OutboundMessage(id=f"t-{i}", to=f"+4477{i:08d}", text=TEXT, sender="12345")
                    try:
                        await gw.send(m)
                    except Exception as exc:  # counted and reported, the run goes on
                        errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1

            callers = max(1, args.callers_per_slot * binds * window)
            t0 = time.perf_counter()
            with GcPauses() as pauses:
                await asyncio.gather(*(caller() for _ in range(callers)))
            elapsed = time.perf_counter() - t0
            receipts_ok = await drained(smsc, n, timeout=30.0) if args.receipts else True
            drain_s = time.perf_counter() - t0 - elapsed
            stats = smsc.stats()
            by_smsc_bind = Counter(sub.bind_id for sub in smsc.received)
    rate = n / elapsed if elapsed else 0.0
    return {
        "binds": binds, "window": window, "messages": n, "callers": callers, "seconds": round(elapsed, 3),
        "msgs_per_s": round(rate, 1), "msgs_per_s_per_bind": round(rate / binds, 1),
        "per_bind": {name: {"submits": c, "msgs_per_s": round(c / elapsed, 1)}
                     for name, c in sorted(per_bind.items())},
        "smsc_submits_per_bind": sorted(by_smsc_bind.values(), reverse=True),
        "submit_resp_ms": percentiles(latencies),
        "errors": dict(errors),
        "receipts": args.receipts, "receipts_sent": stats["receipts_sent"],
        "receipts_resent": stats["receipts_resent"], "receipts_drained": receipts_ok,
        "receipts_drain_s": round(drain_s, 2) if args.receipts else None,
        "gc_during_sends": pauses.summary(), "smsc": stats,
    }  # fmt: skip


async def rate_accuracy(redis_url: str, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    m = args.rate_messages if args.rate_messages is not None else int(rate * 15)
    arrived = 0
    everything = asyncio.Event()

    def on_message(_: Message) -> None:
        nonlocal arrived
        arrived += 1
        if arrived >= m:
            everything.set()

    behaviour = SmscBehaviour(mode="happy", latency=0.0)
    async with SimulatedSmsc(behaviour=behaviour, on_message=on_message) as smsc:
        # "carrier": the connector name bench_gateways' load_backlog writes its lane and records for.
        section = smpp_section(smsc, rate=rate, registered_delivery=args.receipts)
        async with Runtime(config(redis_url, "carrier", section), http=False, worker=False) as rt:
            gw = rt.gateways["carrier"]
            assert isinstance(gw, SmppGateway)
            await bound(gw, 1)
            console.print(f"rate: loading {m:,} bulk messages, connector at rate {rate:g}/s")
            t0 = time.perf_counter()
            await load_backlog(rt.store.redis, m, rt.config.engine.shards)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(everything.wait(), m / rate * 2 + 30)
            elapsed = time.perf_counter() - t0
            for _ in range(40):  # the last sends' outcomes are recorded just after they arrive
                if not (left := await bulk_left(rt.store.redis, rt.config.engine.shards)):
                    break
                await asyncio.sleep(0.05)
            arrivals = sorted(sub.at for sub in smsc.received)
            dests = len({sub.dest for sub in smsc.received})
            stats = smsc.stats()
            rebooked = rt.senders["carrier"].pacer.rebooked
    span = (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else 0.0
    mean = (len(arrivals) - 1) / span if span else 0.0
    return {
        "configured_per_s": rate, "messages": m, "received": len(arrivals),
        "distinct_destinations": dests, "seconds": round(elapsed, 2),
        "mean_per_s": round(mean, 1), "mean_pct_of_rate": round(100 * mean / rate, 2),
        "max_in_any_1s_window": busiest_second(arrivals), "slots_rebooked_late": rebooked,
        "min_in_any_full_1s_window_after_first": quietest_second(arrivals),
        "bulk_lane_length_at_end": left, "receipts": args.receipts, "smsc": stats,
    }  # fmt: skip


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "parameters": {
            "messages": args.messages, "binds": args.binds, "windows": args.windows,
            "receipts": args.receipts, "callers_per_window_slot": args.callers_per_slot,
            "rates": args.rate, "rate_messages": args.rate_messages or "rate x 15",
            "text": TEXT, "smsc": "SimulatedSmsc happy, latency 0, same process and event loop",
        },
        "machine": machine(),
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="parley-bench-smpp-") as tmp:
        async with EmbeddedRedis(Path(tmp), persistent=False) as redis_server:
            if args.part in ("all", "throughput"):
                rows = []
                for binds in args.binds:
                    for window in args.windows:
                        console.print(
                            f"throughput: binds={binds} window={window}, {args.messages:,} messages"
                        )
                        rows.append(await throughput(redis_server.url, binds, window, args))
                result["throughput"] = rows
            if args.part in ("all", "rate"):
                result["rates"] = [await rate_accuracy(redis_server.url, r, args) for r in args.rate]
    return result


def report(result: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"smpp-{stamp}.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    (out_dir / "smpp-latest.json").write_bytes(path.read_bytes())
    out = Console(width=140)
    p = result["parameters"]
    if "throughput" in result:
        table = Table(
            title=f"SMPP submits/s, {p['messages']:,} msgs a row, receipts {'on' if p['receipts'] else 'off'}"
        )
        cols = ("binds", "window", "msgs/s", "per bind", "split", "p50 ms", "p99 ms", "max ms", "gc2 max ms",
                "errors")  # fmt: skip
        for col in cols:
            table.add_column(col, justify="right")
        for row in result["throughput"]:
            lat = row["submit_resp_ms"]
            split = "/".join(str(b["submits"]) for b in row["per_bind"].values())
            table.add_row(
                str(row["binds"]), str(row["window"]), f"{row['msgs_per_s']:,.0f}",
                f"{row['msgs_per_s_per_bind']:,.0f}", split, str(lat.get("p50", "-")),
                str(lat.get("p99", "-")), str(lat.get("max", "-")),
                str(row["gc_during_sends"]["gen2"]["max_ms"]), str(sum(row["errors"].values())),
            )  # fmt: skip
        out.print(table)
        for row in result["throughput"]:
            if row["errors"]:
                out.print(f"binds={row['binds']} window={row['window']} errors: {row['errors']}")
            if row["receipts"] and not row["receipts_drained"]:
                out.print(f"binds={row['binds']} window={row['window']}: receipts not all answered in 30 s")
    if "rates" in result:
        table = Table(title="Rate on the wire: one smpp connector through the send pipeline")
        cols = ("rate", "received", "mean/s", "% of rate", "max in any 1 s", "min in any full 1 s",
                "rebooked", "lane left")  # fmt: skip
        for col in cols:
            table.add_column(col, justify="right")
        for r in result["rates"]:
            quiet = r["min_in_any_full_1s_window_after_first"]
            table.add_row(
                f"{r['configured_per_s']:g}", f"{r['received']:,}/{r['messages']:,}", str(r["mean_per_s"]),
                str(r["mean_pct_of_rate"]), str(r["max_in_any_1s_window"]),
                "-" if quiet is None else str(quiet), str(r["slots_rebooked_late"]),
                str(r["bulk_lane_length_at_end"]),
            )  # fmt: skip
        out.print(table)
    mach = result["machine"]
    out.print(
        f"machine: {mach['cpu']}, {mach['cores']} cores, Python {mach['python']}, Redis {mach['redis']}, "
        f"parley {mach['parley']} ({mach['commit']}); {mach['note']}"
    )
    out.print(f"wrote {path}")
    return path


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--part", choices=("all", "throughput", "rate"), default="all")
    p.add_argument("--messages", type=int, default=20_000, help="messages per throughput row (20,000)")
    p.add_argument("--binds", type=ints, default=[1, 2], help="binds to try, comma separated (1,2)")
    p.add_argument("--windows", type=ints, default=[1, 10, 50], help="windows to try (1,10,50)")
    p.add_argument(
        "--receipts", action=argparse.BooleanOptionalAction, default=True,
        help="ask for delivery receipts in the throughput rows (default on)",
    )  # fmt: skip
    p.add_argument("--callers-per-slot", type=int, default=2, help="concurrent senders per window slot (2)")
    p.add_argument(
        "--rate", type=floats, default=[100.0, 200.0], help="the rate-accuracy connector's rates (100,200)"
    )
    p.add_argument("--rate-messages", type=int, default=None, help="messages at that rate (rate x 15)")
    p.add_argument("--out", default=str(ROOT / "bench-results"))
    args = p.parse_args(argv)
    import uvloop

    result = uvloop.run(run(args))
    report(result, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
