"""End-to-end benchmark: inbound text on the wire -> reply on the wire, open loop, at increasing rates.

What runs (all on 127.0.0.1, all on this machine's cores):
- a private redis-server (no persistence), started here; with ``--cluster``, a private Redis
  Cluster instead: 3 masters, no replicas (loadtests/redis_cluster.py), and Parley configured with
  ``redis.cluster: true`` and one node's address (``redis_mode`` in the JSON says which ran);
- Parley itself: ``parley run [--workers N]``, a separate process tree with a generated config;
- the far edge, in this process: a stub provider that receives Parley's replies and timestamps
  them (the ``type: http`` gateway posts to it), and the load generator that texts Parley's
  inbound webhook as customers.

Method:
1. Baseline: pipelined EVALSHA of a one-line script on the same Redis, per second, so figures can
   be compared across machines as a ratio (on a cluster: each master alone, one after the other,
   in ``baseline_evalsha_pipelined_per_node``, and their sum).
2. Preload C held conversations through the real path: PUT each contact, start the NPS flow for
   all of them (``POST /v1/flows/nps/start``), wait until every greeting reached the stub.
   Measure Redis memory: INFO used_memory before and after the starts (summed over the masters of
   a cluster), and MEMORY USAGE of the keys of a sample of contacts (each on its node).
3. Offer texts at a fixed rate R for S seconds, open loop: a text's send time is fixed by the
   schedule, not by earlier replies, and its latency is measured from that scheduled time, so a
   stall shows up in the figures instead of slowing the generator down. Every text gets exactly
   one reply (the script cycles "9" -> promoter question, a reason -> thanks, "nps" -> greeting).
   Latencies go into an HdrHistogram per rate.
4. Repeat at increasing rates until one is not sustained: a rate is *sustained* when every text
   offered at it was answered, its p99 stayed under 1 s, and the generator kept to at least 95%
   of the schedule (else the generator, not Parley, was the limit, and the run says so).
5. ``bytes_per_message_steady``: the receipt and dedupe bookkeeping each message leaves, at a
   steady rate (loadtests/bookkeeping.py: ``--bookkeeping`` messages each way through the real
   scripts with a clock moving at the planned rate, in database 1 of the same server; MEMORY
   USAGE of the bookkeeping hashes over their entries). The rate steps above last seconds: their
   maps are nowhere near the fill a steady stream gives, so they are not used for this figure.
   With ``--cluster`` this runs on a private single redis-server (a cluster has no database 1;
   the bytes of a hash entry do not depend on the mode).

Writes ``bench-results/bench-<time>.json`` (and ``latest.json``), a PNG of the latency
percentiles against the offered rate, and prints a table. Ctrl-C stops the run and still writes
what it has (marked partial).

    python loadtests/bench.py [--conversations 20000] [--workers 1] [--rates 250,500,...] [--cluster]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
import yaml
from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from engine import __version__
from engine.core import keys
from engine.core.redis_embedded import EmbeddedRedis, die_with_parent, free_port

try:  # imported as loadtests.bench (the tests)
    from loadtests import bookkeeping, cpu, wire
    from loadtests.redis_cluster import LocalCluster
except ImportError:  # run as a script: loadtests/ is sys.path[0]
    import bookkeeping  # type: ignore[no-redef]
    import cpu  # type: ignore[no-redef]
    import wire  # type: ignore[no-redef]
    from redis_cluster import LocalCluster  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-key-0123456789abcdef"
#: One reply each: "9" -> promoter question; a reason -> thanks (ends); "nps" -> greeting (starts).
SCRIPT = ("9", "Quick delivery and a friendly driver", "nps")
SUSTAINED_P99_MS = 1000.0
#: A text answered later than this is counted in its step's ``slow_by_second``.
SLOW_MS = 20.0
console = Console(stderr=True)


@dataclass
class Step:
    """One offered rate: what was offered, what came back, and how fast."""

    rate: int
    seconds: float
    offered: int = 0
    refused: int = 0
    answered: int = 0
    send_lag_ms: float = 0.0  # how far the generator fell behind its schedule, at worst
    achieved_rate: float = 0.0
    hist: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, 120_000_000, 3))
    #: Mean per engine stage during this step (from /metrics), in ms.
    stages_ms: dict[str, float] = field(default_factory=dict)
    #: CPU microseconds per answered text, by process (loadtests/cpu.py), and Redis's side.
    cpu_us: dict[str, float] = field(default_factory=dict)
    redis_per_turn: dict[str, Any] = field(default_factory=dict)
    #: When the step's texts were offered (perf_counter), for ``slow_by_second``.
    started: float = 0.0
    #: Per second of the step: [texts answered later than SLOW_MS, the slowest's ms]. Tells a
    #: tail spread over the step (CPU) from one stall (a pause in one process).
    slow: dict[int, list[float]] = field(default_factory=dict)

    def note(self, scheduled: float, latency_s: float) -> None:
        ms = latency_s * 1000
        if ms > SLOW_MS:
            entry = self.slow.setdefault(int(scheduled - self.started), [0, 0.0])
            entry[0] += 1
            entry[1] = max(entry[1], round(ms, 1))

    @property
    def sustained(self) -> bool:
        return (
            self.offered > 0
            and self.answered == self.offered - self.refused
            and self.refused == 0
            and self.p(99) <= SUSTAINED_P99_MS
            and self.achieved_rate >= 0.95 * self.rate
        )

    def p(self, q: float) -> float:
        return self.hist.get_value_at_percentile(q) / 1000 if self.hist.total_count else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "offered_rate": self.rate,
            "achieved_offer_rate": round(self.achieved_rate, 1),
            "seconds": self.seconds,
            "offered": self.offered,
            "refused": self.refused,
            "answered": self.answered,
            "throughput_per_s": round(self.answered / self.seconds, 1) if self.seconds else 0,
            "generator_max_lag_ms": round(self.send_lag_ms, 1),
            "latency_ms": {
                "p50": self.p(50),
                "p90": self.p(90),
                "p99": self.p(99),
                "p99.9": self.p(99.9),
                "max": self.hist.get_max_value() / 1000 if self.hist.total_count else 0.0,
            },
            "engine_stage_means_ms": self.stages_ms,
            "cpu_us_per_turn": self.cpu_us,
            "redis_per_turn": self.redis_per_turn,
            "sustained": self.sustained,
            f"slow_by_second_over_{SLOW_MS:g}ms": {str(k): v for k, v in sorted(self.slow.items())},
        }


class Handsets:
    """The stub provider: every reply Parley sends lands here and is matched, in order, to the
    oldest unanswered text of that customer (Parley keeps one customer's replies in order)."""

    def __init__(self) -> None:
        self.waiting: dict[str, deque[tuple[float, Step]]] = defaultdict(deque)
        self.greetings = 0
        self.port = 0
        self._ids = itertools.count()
        self._server: wire.StubServer | None = None
        self._step_done: dict[int, asyncio.Event] = {}

    async def __aenter__(self) -> Handsets:
        self._server = await wire.StubServer(self._send).__aenter__()
        self.port = self._server.port
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            await self._server.__aexit__(*exc)

    def _send(self, raw: bytes) -> bytes:
        body = orjson.loads(raw)
        arrived = time.perf_counter()
        queue = self.waiting.get(body["to"])
        if queue:
            scheduled, step = queue.popleft()
            step.hist.record_value(max(1, int((arrived - scheduled) * 1_000_000)))
            step.note(scheduled, arrived - scheduled)
            step.answered += 1
        else:
            self.greetings += 1
        return b'{"id":"h-%d"}' % next(self._ids)


class RedisUnderTest:
    """The Redis the run uses: one private redis-server, or (``cluster``) a private 3-master
    Redis Cluster. ``url`` is what Parley is given (a node's, on a cluster); ``node_urls`` are the
    masters', for what is read or summed per node (INFO, the baseline)."""

    def __init__(self, root: Path, *, cluster: bool) -> None:
        self.cluster = cluster
        self._single = None if cluster else EmbeddedRedis(root / "redis", persistent=False)
        self._cluster = (
            LocalCluster(root / "cluster", masters=3, replicas=0, orphan_safe=True) if cluster else None
        )

    @property
    def mode(self) -> str:
        return "cluster" if self.cluster else "single"

    def start(self) -> None:
        if self._single is not None:
            self._single.start()
        else:
            assert self._cluster is not None
            self._cluster.start()

    def stop(self) -> None:
        if self._single is not None:
            self._single.stop()
        if self._cluster is not None:
            self._cluster.stop()

    @property
    def url(self) -> str:
        if self._single is not None:
            return self._single.url
        assert self._cluster is not None
        return self._cluster.url

    @property
    def node_urls(self) -> list[str]:
        if self._single is not None:
            return [self._single.url]
        assert self._cluster is not None
        return [f"redis://{n.addr}" for n in self._cluster.nodes]

    @property
    def pids(self) -> list[int]:
        if self._single is not None:
            assert self._single.proc is not None
            return [self._single.proc.pid]
        assert self._cluster is not None
        return self._cluster.pids()

    def client(self) -> Any:
        """A client of the whole keyspace (routing each key to its node on a cluster)."""
        if self.cluster:
            return aioredis.RedisCluster.from_url(self.url)
        return aioredis.Redis.from_url(self.url)

    async def used_memory(self) -> int:
        """INFO used_memory, summed over the masters."""
        total = 0
        for url in self.node_urls:
            r = aioredis.Redis.from_url(url)
            try:
                total += int((await r.info("memory"))["used_memory"])
            finally:
                await r.aclose()
        return total


async def baseline_evalsha(url: str, seconds: float = 2.0) -> float:
    """Pipelined EVALSHA calls per second of a trivial script on the same Redis."""
    r = aioredis.Redis.from_url(url)
    try:
        sha = await r.script_load("return 1")
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            async with r.pipeline(transaction=False) as pipe:
                for _ in range(256):
                    pipe.evalsha(sha, 0)
                await pipe.execute()
            done += 256
        return done / (time.perf_counter() - t0)
    finally:
        await r.aclose()


class Engine:
    """``parley run`` as a child process tree, configured for the benchmark."""

    def __init__(
        self, redis_url: str, handsets_port: int, workers: int, workdir: Path, *, cluster: bool = False
    ) -> None:
        self.port = free_port()
        self.workers = workers
        redis_config: dict[str, Any] = {"url": redis_url, "max_connections": 64}
        if cluster:
            redis_config["cluster"] = True
        config = {
            "redis": redis_config,
            "http": {"host": "127.0.0.1", "port": self.port},
            "api": {"keys": [API_KEY]},
            "engine": {"flows_dir": str(ROOT / "rules"), "shards": 8},
            "gateways": {
                "carrier": {"type": "http", "url": f"http://127.0.0.1:{handsets_port}/send", "sender": "1234"}
            },
            "log": {"level": "warning"},
        }
        self.config_path = workdir / "parley.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "parley.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [sys.executable, "-m", "engine.app.cli", "--config", str(self.config_path), "run"]
        if self.workers != 1:
            argv += ["--workers", str(self.workers)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "PROMETHEUS_"))}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,  # no orphan if we are killed
            )  # fmt: skip

    async def ready(self, session: aiohttp.ClientSession, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"parley exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{self.url}/healthz") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"parley not healthy after {timeout:.0f}s: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-1500:]
        return ""


async def put_contacts(
    session: aiohttp.ClientSession, engine: Engine, numbers: list[str], progress: Progress
) -> None:
    """PUT every contact through the API (the CRM's side of the story)."""
    task = progress.add_task("contacts", total=len(numbers))
    sem = asyncio.Semaphore(64)

    async def put(n: str) -> None:
        async with (
            sem,
            session.put(f"{engine.url}/v1/contacts/{n}", json={"fields": {"first_name": "Sam"}}) as r,
        ):
            if r.status not in (200, 201):
                raise RuntimeError(f"PUT contact answered {r.status}: {await r.text()}")
        progress.advance(task)

    await asyncio.gather(*(put(n) for n in numbers))


async def start_conversations(
    session: aiohttp.ClientSession, engine: Engine, numbers: list[str], handsets: Handsets, progress: Progress
) -> None:
    """Start the NPS flow for every contact; wait until every greeting reached its handset."""
    started = progress.add_task("conversations", total=len(numbers))
    for i in range(0, len(numbers), 5000):
        chunk = numbers[i : i + 5000]
        async with session.post(f"{engine.url}/v1/flows/nps/start", json={"contacts": chunk}) as r:
            if r.status != 202:
                raise RuntimeError(f"start answered {r.status}: {await r.text()}")
    while handsets.greetings < len(numbers):
        progress.update(started, completed=handsets.greetings)
        await asyncio.sleep(0.2)
    progress.update(started, completed=len(numbers))


async def offer(
    pool: wire.Pool,
    step: Step,
    texts: itertools.cycle[tuple[str, str]] | Any,
    handsets: Handsets,
    progress: Progress,
) -> None:
    """Offer ``step.rate`` texts per second for ``step.seconds``, on schedule (open loop)."""
    total = int(step.rate * step.seconds)
    bar = progress.add_task(f"{step.rate}/s", total=total)
    in_flight: set[asyncio.Task[None]] = set()
    mo = itertools.count()

    async def post(number: str, text: str, scheduled: float) -> None:
        body = orjson.dumps({"from": number, "to": "1234", "text": text, "id": f"b{next(mo)}-{scheduled}"})
        try:
            ok = await pool.post("/v1/inbound/carrier", body) == 202
        except ConnectionError:
            ok = False
        if not ok:
            step.refused += 1
            with contextlib.suppress(ValueError):
                handsets.waiting[number].remove((scheduled, step))

    t0 = time.perf_counter() + 0.01
    step.started = t0
    sent = 0
    while sent < total:
        now = time.perf_counter()
        while sent < total and t0 + sent / step.rate <= now:
            scheduled = t0 + sent / step.rate
            step.send_lag_ms = max(step.send_lag_ms, (now - scheduled) * 1000)
            number, text = next(texts)
            handsets.waiting[number].append((scheduled, step))
            task = asyncio.create_task(post(number, text, scheduled))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            sent += 1
        step.offered = sent
        progress.update(bar, completed=sent)
        await asyncio.sleep(0.001)
    step.achieved_rate = total / max(1e-9, time.perf_counter() - t0)
    if in_flight:
        await asyncio.wait(in_flight)
    # Let the replies drain (bounded): a rate Parley cannot keep up with shows as unanswered texts.
    deadline = time.perf_counter() + 5
    while step.answered < step.offered - step.refused and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def redis_counters(nodes: list[aioredis.Redis]) -> dict[str, Any]:
    """Redis's command counts and network bytes so far, summed over the nodes."""
    commands: dict[str, dict[str, int]] = {}
    stats = {"total_net_input_bytes": 0, "total_net_output_bytes": 0}
    for r in nodes:
        for name, c in (await r.info("commandstats")).items():
            commands.setdefault(name, {"calls": 0})["calls"] += int(c["calls"])
        node_stats = await r.info("stats")
        for k in stats:
            stats[k] += int(node_stats[k])
    return {"commands": commands, "stats": stats}


def redis_per_turn(before: dict[str, Any], after: dict[str, Any], turns: int) -> dict[str, Any]:
    """Commands, calls and bytes Redis handled per answered text during a step."""
    if turns <= 0:
        return {}
    commands = cpu.command_delta(before["commands"], after["commands"], turns)
    s0, s1 = before["stats"], after["stats"]
    return {
        "commands": commands,
        "commands_total": round(sum(commands.values()), 2),
        "bytes_in": round((s1["total_net_input_bytes"] - s0["total_net_input_bytes"]) / turns),
        "bytes_out": round((s1["total_net_output_bytes"] - s0["total_net_output_bytes"]) / turns),
    }


async def stage_sums(session: aiohttp.ClientSession, engine: Engine) -> dict[str, tuple[float, float]]:
    """(sum seconds, count) of each engine stage histogram, from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(f"{engine.url}/metrics") as r:
        text = await r.text()
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("parley_turn_stage_seconds_"):
                name = sample.labels["stage"]
            elif sample.name.startswith("parley_send_seconds_"):
                name = "send"
            elif sample.name.startswith("parley_turn_seconds_"):
                name = "turn"
            else:
                continue
            if sample.name.endswith("_sum"):
                sums[name][0] += sample.value
            elif sample.name.endswith("_count"):
                sums[name][1] += sample.value
    return {k: (v[0], v[1]) for k, v in sums.items()}


def stage_means(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    out = {}
    for name, (total, count) in after.items():
        t0, c0 = before.get(name, (0.0, 0.0))
        if count > c0:
            out[name] = round((total - t0) / (count - c0) * 1000, 3)
    return out


async def memory(redis: RedisUnderTest, numbers: list[str], before: int) -> dict[str, Any]:
    """Redis bytes per held conversation: the session and its timer (the state that holds a
    conversation), and everything (INFO delta over the starts, incl. the greeting's log record;
    summed over the masters of a cluster, where MEMORY USAGE asks each key's own node)."""
    r = redis.client()
    try:
        after = await redis.used_memory()
        sample = random.Random(7).sample(numbers, min(200, len(numbers)))
        parts: dict[str, float] = {}
        for name, key in (
            ("session", keys.session),
            ("contact", keys.contact),
            ("message_log", keys.message_index),
            ("message_records", keys.message_records),
        ):
            sizes = [await r.memory_usage(key(n, keys.shard_of(n, 8)), samples=0) or 0 for n in sample]
            parts[name] = sum(sizes) / len(sizes)
        timer_bytes = 0
        for shard in range(8):
            timer_bytes += await r.memory_usage(keys.timers(shard), samples=0) or 0
        parts["timers"] = timer_bytes / len(numbers)
        return {
            "bytes_per_conversation": round(parts["session"] + parts["timers"]),
            "bytes_per_conversation_all": round((after - before) / len(numbers)),
            "breakdown_bytes": {k: round(v) for k, v in parts.items()},
            "used_memory_bytes": after,
        }
    finally:
        await r.aclose()


def plot(steps: list[Step], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    fig = chart(steps, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart(steps: list[Step], title: str) -> Any:
    """The latency percentiles against the offered rate, each rate marked ``sustained`` or ``not
    sustained`` above the plot (and the p99 of a rate not sustained crossed out in red), so the
    chart alone says where the engine stopped keeping up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.transforms import blended_transform_factory

    rates = [s.rate for s in steps]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for q, style in ((50, "o-"), (90, "s-"), (99, "^-"), (99.9, "d-")):
        ax.plot(rates, [max(s.p(q), 0.01) for s in steps], style, label=f"p{q:g}")
    ax.plot(rates, [max(s.hist.get_max_value() / 1000, 0.01) for s in steps], "x--", label="max")
    failed = [s for s in steps if not s.sustained]
    if failed:
        ax.plot(
            [s.rate for s in failed], [max(s.p(99), 0.01) for s in failed], "X", color="red", markersize=12,
            linestyle="none", label="not sustained (texts unanswered, p99 > 1 s or generator behind)",
        )  # fmt: skip
    top = blended_transform_factory(ax.transData, ax.transAxes)
    for s in steps:
        ax.text(
            s.rate, 1.01, "sustained" if s.sustained else "not sustained", transform=top, rotation=90,
            ha="center", va="bottom", fontsize=7, color="green" if s.sustained else "red", clip_on=False,
        )  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("offered inbound texts per second (open loop)")
    ax.set_ylabel("inbound on the wire -> reply on the wire (ms)")
    ax.axhline(20, color="grey", linestyle=":", linewidth=1, label="20 ms (p99 aim at 1,000/s)")
    ax.set_title(title, fontsize=9, pad=58)  # above the marks
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis": next((w.split("=")[1] for w in redis_version if w.startswith("v=")), "?"),
        "parley": __version__,
        "commit": commit,
        "note": "load generator, stub provider, Redis and Parley all share these cores",
    }


async def run(args: argparse.Namespace) -> int:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before anything runs
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    result: dict[str, Any] = {
        "machine": machine(),
        "redis_mode": "cluster" if args.cluster else "single",
        "parameters": {
            "redis_mode": "cluster" if args.cluster else "single",
            "redis_masters": 3 if args.cluster else 1,
            "conversations": args.conversations,
            "workers": args.workers,
            "rates": args.rates,
            "step_seconds": args.seconds,
            "flow": "nps",
            "shards": 8,
            "sustained_means": (
                f"every text answered, p99 <= {SUSTAINED_P99_MS:.0f} ms, generator >= 95% of schedule"
            ),
        },
        "partial": True,
    }
    steps: list[Step] = []
    numbers = [f"+4477{i:08d}" for i in range(args.conversations)]
    # Ctrl-C or SIGTERM: stop measuring, stop the engine, write what was measured.
    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, main_task.cancel)
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        server = RedisUnderTest(Path(tmp), cluster=args.cluster)
        engine: Engine | None = None
        try:
            console.print(f"[bold]redis[/]: {server.mode} ...")
            server.start()  # on this (the main) thread: its nodes die with it
            async with Handsets() as handsets:
                engine = Engine(server.url, handsets.port, args.workers, Path(tmp), cluster=args.cluster)
                engine.start()
                conn = aiohttp.TCPConnector(limit=256, force_close=False)
                async with aiohttp.ClientSession(
                    connector=conn, headers={"Authorization": f"Bearer {API_KEY}"}
                ) as session:
                    await engine.ready(session)
                    console.print("[bold]baseline[/]: pipelined EVALSHA on the same Redis ...")
                    per_node = [
                        round(await baseline_evalsha(u, args.baseline_seconds)) for u in server.node_urls
                    ]
                    # One node: its figure. A cluster: each master alone, one after the other, summed
                    # (what the masters serve between them when the clients are not the limit).
                    result["baseline_evalsha_pipelined_per_s"] = sum(per_node)
                    if args.cluster:
                        result["baseline_evalsha_pipelined_per_node"] = per_node
                    with _progress() as progress:
                        await put_contacts(session, engine, numbers, progress)
                        before = await server.used_memory()  # contacts in, no conversations
                        t0 = time.perf_counter()
                        await start_conversations(session, engine, numbers, handsets, progress)
                        result["preload_seconds"] = round(time.perf_counter() - t0, 1)
                    result.update(await memory(server, numbers, before))
                    positions = itertools.cycle(range(len(numbers)))
                    state = [0] * len(numbers)

                    def texts() -> Any:
                        for i in positions:
                            text = SCRIPT[state[i] % len(SCRIPT)]
                            state[i] += 1
                            yield numbers[i], text

                    stream = texts()
                    assert engine.proc is not None
                    # Every redis-server of a cluster counts as "redis".
                    sampler = cpu.Sampler(
                        [engine.proc.pid, *server.pids, os.getpid()],
                        {os.getpid(): "harness", **dict.fromkeys(server.pids, "redis")},
                    )
                    nodes = [aioredis.Redis.from_url(u) for u in server.node_urls]
                    headers = {"Authorization": f"Bearer {API_KEY}"}
                    pool = await wire.Pool("127.0.0.1", engine.port, headers, size=32).__aenter__()
                    with _progress() as progress:
                        for rate in args.rates:
                            step = Step(rate, args.seconds)
                            steps.append(step)
                            sums = await stage_sums(session, engine)
                            cpu0, redis0 = sampler.sample(), await redis_counters(nodes)
                            await offer(pool, step, stream, handsets, progress)
                            cpu1, redis1 = sampler.sample(), await redis_counters(nodes)
                            step.stages_ms = stage_means(sums, await stage_sums(session, engine))
                            step.cpu_us = cpu.per_turn_us(sampler.between(cpu0, cpu1), step.answered)
                            step.redis_per_turn = redis_per_turn(redis0, redis1, step.answered)
                            if not step.sustained and rate >= 1000:
                                break
                    await pool.__aexit__(None, None, None)
                    for r in nodes:
                        await r.aclose()
                    # Replies that matched no text: a duplicate send would show here.
                    await asyncio.sleep(0.5)
                    result["unmatched_replies"] = handsets.greetings - len(numbers)
                    # Receipt and dedupe bookkeeping at a steady rate, in a database of its own
                    # on the same server (loadtests/bookkeeping.py says how and why).
                    console.print("[bold]bookkeeping[/]: bytes per message at a steady rate ...")
                    if args.cluster:  # a cluster has no database 1: a private server of its own
                        side = EmbeddedRedis(Path(tmp) / "bookkeeping", persistent=False)
                        side.start()
                        try:
                            result.update(await bookkeeping.measure(side.url, args.bookkeeping))
                        finally:
                            side.stop()
                        result["bookkeeping"]["redis"] = "a private single redis-server"
                    else:
                        result.update(
                            await bookkeeping.measure(server.url.rsplit("/", 1)[0] + "/1", args.bookkeeping)
                        )
                    result["partial"] = False
        except (KeyboardInterrupt, asyncio.CancelledError):
            main_task.uncancel()
            console.print("[yellow]interrupted: writing what was measured[/]")
        finally:
            if engine is not None:
                await asyncio.to_thread(engine.stop)
            server.stop()
    return report(result, steps, out_dir, stamp)


def report(result: dict[str, Any], steps: list[Step], out_dir: Path, stamp: str) -> int:
    sustained = [s.rate for s in steps if s.sustained]
    at_1000 = next((s for s in steps if s.rate == 1000), None)
    result["max_sustained_turns_per_s"] = max(sustained) if sustained else 0
    result["p99_ms_at_1000"] = at_1000.p(99) if at_1000 else None
    result["p50_ms_at_1000"] = at_1000.p(50) if at_1000 else None
    if at_1000 is None:  # say why there is no figure, rather than "None ms"
        ran = ", ".join(str(s.rate) for s in steps) or "none"
        result["p99_ms_at_1000_missing"] = f"1000/s was not among the rates run: {ran}"
    result["steps"] = [s.summary() for s in steps]
    # (an interrupted step has no achieved rate: it is not the generator's fault)
    generator_limited = [s.rate for s in steps if 0 < s.achieved_rate < 0.95 * s.rate]
    result["generator_limited_rates"] = generator_limited
    json_path = out_dir / f"bench-{stamp}.json"
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    (out_dir / "latest.json").write_bytes(json_path.read_bytes())
    if steps:
        m = result["machine"]
        mode = "3-master Redis Cluster" if result["redis_mode"] == "cluster" else "one redis-server"
        title = (
            f"Parley {m['commit']}: {result['parameters']['conversations']:,} held conversations, {mode}, "
            f"{result['parameters']['workers']} worker(s); "
            f"{m['cores']} cores shared by everything ({m['cpu']})"
        )
        plot(steps, out_dir / f"bench-{stamp}.png", title)
        (out_dir / "latest.png").write_bytes((out_dir / f"bench-{stamp}.png").read_bytes())

    table = Table(
        title=f"Parley end-to-end, {result['parameters']['conversations']:,} held conversations, "
        f"redis {result['redis_mode']} (ms)"
    )
    for col in ("offered/s", "achieved/s", "answered", "p50", "p90", "p99", "p99.9", "max", "sustained"):
        table.add_column(col, justify="right")
    for s in steps:
        lat = s.summary()["latency_ms"]
        table.add_row(
            str(s.rate), f"{s.achieved_rate:.0f}", f"{s.answered}/{s.offered}",
            *(f"{lat[k]:.1f}" for k in ("p50", "p90", "p99", "p99.9", "max")),
            "yes" if s.sustained else "NO",
        )  # fmt: skip
    out = Console(width=max(120, Console().width))
    out.print(table)
    p99_at_1000 = (
        f"{result['p99_ms_at_1000']} ms"
        if at_1000 is not None
        else f"not measured ({result['p99_ms_at_1000_missing']})"
    )
    out.print(
        f"max sustained: {result['max_sustained_turns_per_s']} turns/s   "
        f"p99 at 1000/s: {p99_at_1000}   "
        f"bytes/conversation: {result.get('bytes_per_conversation')} (state), "
        f"{result.get('bytes_per_conversation_all')} (all, incl. message log)   "
        f"bytes/message (receipt + dedupe bookkeeping): {result.get('bytes_per_message_steady')}   "
        f"baseline EVALSHA: {result.get('baseline_evalsha_pipelined_per_s')}/s"
        + (
            f" (per master: {result['baseline_evalsha_pipelined_per_node']})"
            if "baseline_evalsha_pipelined_per_node" in result
            else ""
        )
    )
    if generator_limited:
        out.print(f"[yellow]the load generator fell behind its schedule at {generator_limited} texts/s[/]")
    out.print(f"wrote {json_path} {'(partial)' if result['partial'] else ''}")
    return 0 if not result["partial"] else 130


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:>14}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(), console=console, transient=True,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--conversations", type=int, default=20_000, help="held conversations (default 20,000)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (1: inside the API process)")
    p.add_argument(
        "--rates",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[250, 500, 1000, 1500, 2000, 3000, 4000],
        help="offered texts per second, in order (stops after the first one not sustained at >= 1000)",
    )
    p.add_argument("--seconds", type=float, default=8.0, help="seconds per rate")
    p.add_argument(
        "--bookkeeping",
        type=int,
        default=20_000,
        help="messages each way for bytes_per_message_steady (20,000)",
    )
    p.add_argument(
        "--baseline-seconds", type=float, default=2.0, help="seconds of the EVALSHA baseline, per node (2)"
    )
    p.add_argument(
        "--cluster",
        action="store_true",
        help="run on a private local Redis Cluster (3 masters, no replicas) instead of one redis-server",
    )
    p.add_argument("--out", default=str(ROOT / "bench-results"))
    args = p.parse_args(argv)
    import uvloop

    try:
        return uvloop.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
