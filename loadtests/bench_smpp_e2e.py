"""End-to-end SMPP benchmark: a carrier's MO (deliver_sm) on the wire -> Parley's reply
(submit_sm) on the wire, open loop, at increasing rates (``bench_smpp.py --e2e``).

What runs (all on 127.0.0.1, all on this machine's cores):
- a private redis-server (no persistence), started here;
- Parley itself: ``python -m engine.app.cli run [--workers N]``, a separate process tree whose
  one gateway is ``type: smpp`` bound to the simulated SMSC (``binds`` transceivers, ``window``,
  ``rate`` set far above any offered rate so the carrier's TPS is never the limit; receipts on,
  so the SMSC sends a delivery receipt per reply as a carrier would);
- the far edge, in a process of its own (multiprocessing, spawn): the simulated SMSC
  (``gateways/simulators/smsc.py``, happy, latency 0) and the load generator inside it, which
  sends the customers' texts as deliver_sm on Parley's bind on schedule and timestamps each
  reply's submit_sm as it arrives. This process only starts things, collects and reports.

Method (as ``make bench``, loadtests/bench.py, whose Step, sustained rule, chart and machine
description are reused): texts at a fixed rate R for S seconds, open loop (a text's send time
is fixed by the schedule, its latency measured from that scheduled time to its reply's
submit_sm arriving at the SMSC); each handset cycles "nps" (greeting) -> "9" (promoter
question) -> a reason (thanks, the end), so every text gets exactly one reply; replies are
matched to the oldest unanswered text of their destination (Parley keeps one contact's replies
in order). A deliver_sm answered with an error or not answered within 5 s is *refused*. A rate is
sustained when every text was answered, p99 <= 1 s and the generator kept to >= 95% of its
schedule; the run stops after the first rate >= 1000 that is not.

Writes ``bench-results/smpp-e2e-<time>.json`` (and ``smpp-e2e-latest.json``, ``.png``) with
the keys of ``make bench`` where they mean the same (``steps``, ``max_sustained_turns_per_s``,
``p99_ms_at_1000``, each step's ``engine_stage_means_ms`` from Parley's /metrics; ``p95`` added
to ``latency_ms``) and prints a table. The far edge is one Python process sending every MO,
answering every submit_sm and sending a receipt for each: at high rates its own delays are in
the figures (the generator's lag is reported, as make bench does).

    python loadtests/bench_smpp.py --e2e [--rates 250,500,...] [--seconds 8] [--workers 2]
                                         [--e2e-binds 2] [--window 100] [--handsets 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import signal
import tempfile
import time
from collections import defaultdict, deque
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from rich.console import Console
from rich.table import Table

from engine.core.redis_embedded import EmbeddedRedis

try:  # imported as loadtests.bench_smpp_e2e (the tests)
    from loadtests.bench import (
        API_KEY,
        SUSTAINED_P99_MS,
        Engine,
        Step,
        machine,
        plot,
        stage_means,
        stage_sums,
    )
except ImportError:  # run as a script: loadtests/ is sys.path[0]
    from bench import (  # type: ignore[no-redef]
        API_KEY,
        SUSTAINED_P99_MS,
        Engine,
        Step,
        machine,
        plot,
        stage_means,
        stage_sums,
    )

ROOT = Path(__file__).resolve().parent.parent
SHORT_CODE = "12345"
#: One reply each: "nps" -> greeting (starts); "9" -> promoter question; a reason -> thanks (ends).
SCRIPT = ("nps", "9", "Quick delivery and a friendly driver")
#: The connector's rate: far above any offered rate (replies/s), so the TPS is never the limit.
CONNECTOR_RATE = 20_000
#: Before the first rate: no bind made or lost for this long (the processes hand binds and
#: shards between them as they start), then a warm-up step (rate/s, seconds) not recorded.
SETTLE_S = 3.0
WARM_UP = (100, 2.0)
console = Console(stderr=True)


# The SMSC's process -------------------------------------------------------------------------


def smsc_process(conn: Connection, handsets: int) -> None:
    """The far edge: the simulated SMSC and the load generator, driven over ``conn``."""
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it (Ctrl-C reaches the group)
    uvloop.run(_far_edge(conn, handsets))


async def _far_edge(conn: Connection, handsets: int) -> None:
    from gateways.simulators.smsc import Message, SimulatedSmsc, SmscBehaviour
    from gateways.smpp import pdu

    numbers = [f"4477{i:08d}" for i in range(handsets)]
    waiting: dict[str, deque[tuple[float, dict[str, Any]]]] = defaultdict(deque)
    unmatched = 0

    def on_message(m: Message) -> None:
        nonlocal unmatched
        queue = waiting.get(m.dest)
        if not queue:
            unmatched += 1
            return
        scheduled, step = queue.popleft()
        step["latencies_us"].append(max(1, int((m.last_at - scheduled) * 1_000_000)))
        step["answered"] += 1

    loop = asyncio.get_running_loop()
    recv = lambda: loop.run_in_executor(None, conn.recv)  # noqa: E731
    behaviour = SmscBehaviour(mode="happy", latency=0.0)
    async with SimulatedSmsc(behaviour=behaviour, on_message=on_message) as smsc:
        conn.send({"port": smsc.port})
        positions = itertools.cycle(range(handsets))
        state = [0] * handsets
        while True:
            cmd = await recv()
            if cmd["cmd"] == "bound":
                # Bound, and settled: the engine's processes hand binds (and shards) between
                # them as they come up; measure once no bind was made or lost for a while.
                deadline = time.monotonic() + cmd["timeout"]
                seen, since = (-1, -1), time.monotonic()
                while time.monotonic() < deadline:
                    now_seen = (smsc.active_binds(), len(smsc.binds))
                    if now_seen != seen:
                        seen, since = now_seen, time.monotonic()
                    elif seen[0] >= cmd["binds"] and time.monotonic() - since >= cmd["settle"]:
                        break
                    await asyncio.sleep(0.05)
                conn.send({"bound": smsc.active_binds()})
            elif cmd["cmd"] == "step":
                rate, total = cmd["rate"], int(cmd["rate"] * cmd["seconds"])
                step: dict[str, Any] = {"rate": rate, "offered": 0, "refused": 0, "answered": 0,
                                        "send_lag_ms": 0.0, "latencies_us": []}  # fmt: skip
                in_flight: set[asyncio.Task[None]] = set()

                async def mo(number: str, text: str, scheduled: float, step: dict[str, Any]) -> None:
                    try:
                        ok = await smsc.deliver(number, SHORT_CODE, text) == [pdu.ESME_ROK]
                    except (TimeoutError, ConnectionError):
                        ok = False
                    if not ok:
                        step["refused"] += 1
                        with contextlib.suppress(ValueError):
                            waiting[number].remove((scheduled, step))

                t0 = time.time() + 0.01
                sent = 0
                while sent < total:
                    now = time.time()
                    while sent < total and t0 + sent / rate <= now:
                        scheduled = t0 + sent / rate
                        step["send_lag_ms"] = max(step["send_lag_ms"], (now - scheduled) * 1000)
                        i = next(positions)
                        text = SCRIPT[state[i] % len(SCRIPT)]
                        state[i] += 1
                        waiting[numbers[i]].append((scheduled, step))
                        task = asyncio.create_task(mo(numbers[i], text, scheduled, step))
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
                        sent += 1
                    step["offered"] = sent
                    await asyncio.sleep(0.001)
                step["achieved_rate"] = total / max(1e-9, time.time() - t0)
                if in_flight:
                    await asyncio.wait(in_flight)
                # Let the replies drain (bounded), as make bench does.
                deadline = time.monotonic() + 5
                while step["answered"] < step["offered"] - step["refused"] and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
                conn.send(step)
            else:  # "stop"
                await asyncio.sleep(0.5)  # late replies would show as unmatched
                conn.send({"stats": smsc.stats(), "unmatched_replies": unmatched,
                           "binds_seen": len([b for b in smsc.binds if b.status == 0])})  # fmt: skip
                return


# Parley ----------------------------------------------------------------------------------------


class SmppEngine(Engine):
    """``make bench``'s engine process, its one gateway an SMPP connector bound to the SMSC."""

    def __init__(self, redis_url: str, smsc_port: int, args: argparse.Namespace, workdir: Path) -> None:
        super().__init__(redis_url, 0, args.workers, workdir)
        config = yaml.safe_load(self.config_path.read_text())
        config["gateways"] = {
            "carrier": {
                "type": "smpp", "host": "127.0.0.1", "port": smsc_port, "system_id": "parley",
                "password": "secret", "sender": SHORT_CODE, "binds": args.binds, "window": args.window,
                "rate": CONNECTOR_RATE, "registered_delivery": True,
            }
        }  # fmt: skip
        self.config_path.write_text(yaml.safe_dump(config))


# The harness -----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before anything runs
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    result: dict[str, Any] = {
        "machine": machine()
        | {"note": "harness, simulated SMSC (its own process), Redis and Parley all share these cores"},
        "parameters": {
            "path": "deliver_sm (SMSC) -> turn -> submit_sm (SMSC)", "workers": args.workers,
            "rates": args.rates, "step_seconds": args.seconds, "flow": "nps", "handsets": args.handsets,
            "shards": 8, "binds": args.binds, "window": args.window, "connector_rate_per_s": CONNECTOR_RATE,
            "receipts": True, "smsc": "SimulatedSmsc happy, latency 0, its own process",
            "settle_s": SETTLE_S, "warm_up": {"rate": WARM_UP[0], "seconds": WARM_UP[1], "recorded": False},
            "sustained_means": (
                f"every text answered, p99 <= {SUSTAINED_P99_MS:.0f} ms, generator >= 95% of schedule"
            ),
        },
        "partial": True,
    }  # fmt: skip
    steps: list[Step] = []
    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, main_task.cancel)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    far = ctx.Process(target=smsc_process, args=(child, args.handsets), daemon=True)
    far.start()
    child.close()  # the SMSC's end is its own now: if that process dies, recv() raises EOFError

    async def ask(msg: dict[str, Any] | None = None) -> Any:
        try:
            if msg is not None:
                parent.send(msg)
            return await asyncio.to_thread(parent.recv)
        except (EOFError, BrokenPipeError):
            raise RuntimeError(f"the SMSC process died (exit code {far.exitcode})") from None

    with tempfile.TemporaryDirectory(prefix="parley-bench-smpp-e2e-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis", persistent=False)
        server.start()
        engine: SmppEngine | None = None
        try:
            port = (await ask())["port"]
            engine = SmppEngine(server.url, port, args, Path(tmp))
            engine.start()
            headers = {"Authorization": f"Bearer {API_KEY}"}
            async with aiohttp.ClientSession(headers=headers) as session:
                await engine.ready(session)
                bound = (await ask({"cmd": "bound", "binds": args.binds, "timeout": 30, "settle": SETTLE_S}))[
                    "bound"
                ]
                if bound < args.binds:
                    raise RuntimeError(f"only {bound} of {args.binds} binds came up: {engine.log_tail()}")
                # Warm-up, not recorded: first connections, first PDUs of each kind, caches.
                await ask({"cmd": "step", "rate": WARM_UP[0], "seconds": WARM_UP[1]})
                for rate in args.rates:
                    console.print(f"[bold]{rate}/s[/] for {args.seconds:g} s ...")
                    sums = await stage_sums(session, engine)
                    got = await ask({"cmd": "step", "rate": rate, "seconds": args.seconds})
                    step = Step(rate, args.seconds, offered=got["offered"], refused=got["refused"],
                                answered=got["answered"], send_lag_ms=got["send_lag_ms"],
                                achieved_rate=got["achieved_rate"])  # fmt: skip
                    for us in got["latencies_us"]:
                        step.hist.record_value(us)
                    step.stages_ms = stage_means(sums, await stage_sums(session, engine))
                    steps.append(step)
                    if not step.sustained and rate >= 1000:
                        break
            end = await ask({"cmd": "stop"})
            result["unmatched_replies"] = end["unmatched_replies"]
            result["smsc"] = end["stats"]
            result["smsc_binds_seen"] = end["binds_seen"]
            result["partial"] = False
        except (KeyboardInterrupt, asyncio.CancelledError):
            main_task.uncancel()
            console.print("[yellow]interrupted: writing what was measured[/]")
        finally:
            if engine is not None:
                await asyncio.to_thread(engine.stop)
            server.stop()
            far.terminate()
            far.join(5)
    return report(result, steps, out_dir, stamp)


def report(result: dict[str, Any], steps: list[Step], out_dir: Path, stamp: str) -> int:
    sustained = [s.rate for s in steps if s.sustained]
    at_1000 = next((s for s in steps if s.rate == 1000), None)
    result["max_sustained_turns_per_s"] = max(sustained) if sustained else 0
    result["p99_ms_at_1000"] = at_1000.p(99) if at_1000 else None
    result["p50_ms_at_1000"] = at_1000.p(50) if at_1000 else None
    if at_1000 is None:
        ran = ", ".join(str(s.rate) for s in steps) or "none"
        result["p99_ms_at_1000_missing"] = f"1000/s was not among the rates run: {ran}"
    result["steps"] = [s.summary() for s in steps]
    for s, summary in zip(steps, result["steps"], strict=True):
        summary["latency_ms"]["p95"] = s.p(95)
    result["generator_limited_rates"] = [s.rate for s in steps if 0 < s.achieved_rate < 0.95 * s.rate]
    json_path = out_dir / f"smpp-e2e-{stamp}.json"
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    (out_dir / "smpp-e2e-latest.json").write_bytes(json_path.read_bytes())
    if steps:
        m, p = result["machine"], result["parameters"]
        title = (
            f"Parley {m['commit']} over SMPP (deliver_sm -> submit_sm): {p['binds']} bind(s), window "
            f"{p['window']}, {p['workers']} worker(s); {m['cores']} cores shared by everything ({m['cpu']})"
        )
        png = out_dir / f"smpp-e2e-{stamp}.png"
        plot(steps, png, title)
        (out_dir / "smpp-e2e-latest.png").write_bytes(png.read_bytes())
    table = Table(title="Parley end-to-end over SMPP: deliver_sm -> reply submit_sm (ms)")
    for col in ("offered/s", "achieved/s", "answered", "refused", "p50", "p95", "p99", "max", "sustained"):
        table.add_column(col, justify="right")
    for s in steps:
        table.add_row(
            str(s.rate), f"{s.achieved_rate:.0f}", f"{s.answered}/{s.offered}", str(s.refused),
            *(f"{s.p(q):.1f}" for q in (50, 95, 99)), f"{s.hist.get_max_value() / 1000:.1f}",
            "yes" if s.sustained else "NO",
        )  # fmt: skip
    out = Console(width=140)
    out.print(table)
    out.print(
        f"max sustained: {result['max_sustained_turns_per_s']} texts/s   unmatched replies: "
        f"{result.get('unmatched_replies')}   connector: {result['parameters']['binds']} bind(s), window "
        f"{result['parameters']['window']}, rate {CONNECTOR_RATE}/s"
    )
    out.print(f"wrote {json_path} {'(partial)' if result['partial'] else ''}")
    return 0 if not result["partial"] else 130


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--e2e`` options of bench_smpp.py."""
    g = p.add_argument_group("--e2e (deliver_sm -> reply submit_sm, open loop)")
    g.add_argument(
        "--rates", type=lambda s: [int(x) for x in s.split(",")], default=[250, 500, 1000, 1500, 2000, 3000],
        help="offered texts per second, in order (stops after the first not sustained at >= 1000)",
    )  # fmt: skip
    g.add_argument("--seconds", type=float, default=8.0, help="seconds per rate (8)")
    g.add_argument("--workers", type=int, default=2, help="worker processes (1: inside the API process)")
    g.add_argument("--e2e-binds", dest="e2e_binds", type=int, default=2, help="the connector's binds (2)")
    g.add_argument("--window", type=int, default=100, help="the connector's window per bind (100)")
    g.add_argument("--handsets", type=int, default=4000, help="customers texting, in turn (4,000)")


def main(args: argparse.Namespace) -> int:
    import uvloop

    args.binds = args.e2e_binds
    try:
        return uvloop.run(run(args))
    except KeyboardInterrupt:
        return 130
