"""What an operator who lives in Grafana and Prometheus relies on, against a running engine's
``/metrics``: the scrape says which build runs and how its process does (CPU, memory, GC), the
latency buckets reach the connector timeout, the shipped dashboard (deploy/grafana/parley.json)
and alert rules (deploy/prometheus/alerts.yml) ask only for metrics and labels Parley exports
after real traffic, and what each alert watches moves as the alert expects when the thing it
watches happens (an SMSC goes away, a provider fails, an event is dead-lettered, a text comes in).

The rules themselves (schema, promtool) are tested in tests/test_alerts.py."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import platform
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from engine.app.runtime import Runtime
from engine.core import keys
from engine.core.metrics import COMMIT_FILE
from gateways.simulators.http_carrier import SimulatedCarrier
from gateways.simulators.smsc import SimulatedSmsc, SmscBehaviour
from tests.conftest import API_KEY, ROOT, eventually, make_config, serve
from tests.promql import check_expr, exported
from tests.test_alerts import alert_rules

DASHBOARD = ROOT / "deploy" / "grafana" / "parley.json"
WEBHOOK_SECRET = "webhook-secret-0123456789"

# -- the engine under watch --------------------------------------------------------------------


@dataclass
class Watched:
    rt: Runtime
    api: aiohttp.ClientSession
    carrier: SimulatedCarrier
    smsc: SimulatedSmsc
    crm_calls: list[int] = field(default_factory=list)

    async def scrape(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """``GET /metrics`` as Prometheus does: series name -> label set -> value."""
        return series(await self.scrape_text())

    async def scrape_text(self) -> str:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{self.rt.http_port}/metrics") as r:
            assert r.status == 200
            return await r.text()

    async def value(self, name: str, **labels: str) -> float | None:
        return (await self.scrape()).get(name, {}).get(tuple(sorted(labels.items())))


def series(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = s.value
    return out


@pytest.fixture
async def watched(redis_url: str, carrier: SimulatedCarrier) -> AsyncIterator[Watched]:
    """A running engine with an HTTP connector (the default, to the simulated carrier), an SMPP
    connector bound to a simulated SMSC (its timeout 45 s), and an outcome webhook to a CRM that
    refuses every event (400: dead-lettered at once)."""
    calls: list[int] = []

    async def crm(request: web.Request) -> web.Response:
        await request.read()
        calls.append(400)
        return web.Response(status=400, text="no such contact")

    async with (
        SimulatedSmsc(behaviour=SmscBehaviour(dlr_delay=0.01)) as smsc,
        serve(("POST", "/events", crm)) as crm_url,
    ):
        cfg = make_config(
            redis_url,
            engine={"default_gateway": "carrier"},
            gateways={
                "carrier": {"type": "http", "url": carrier.url, "sender": "12345", "webhook_secret": WEBHOOK_SECRET,
                            "circuit_failures": 2,
                            "backoff": "10ms", "backoff_max": "20ms", "circuit_cooldown": "100ms",
                            "circuit_cooldown_max": "200ms"},
                "smsc": {"type": "smpp", "host": "127.0.0.1", "port": smsc.port, "system_id": "parley",
                         "password": "secret", "sender": "12345", "reconnect_delay": "50ms",
                         "reconnect_max": "100ms", "response_timeout": "45s"},
            },
            crm={"webhooks": [{"url": f"{crm_url}/events", "secret": WEBHOOK_SECRET, "max_attempts": 1}]},
        )  # fmt: skip
        async with (
            Runtime(cfg) as rt,
            aiohttp.ClientSession(
                f"http://127.0.0.1:{rt.http_port}", headers={"Authorization": f"Bearer {API_KEY}"}
            ) as api,
        ):
            carrier.receipt_url = f"http://127.0.0.1:{rt.http_port}/v1/receipts/carrier"
            carrier.receipt_secret, carrier.receipts = WEBHOOK_SECRET, "after"
            w = Watched(rt, api, carrier, smsc, calls)
            await eventually(lambda: w.value("parley_smpp_binds_up", gateway="smsc"), attempts=1000)
            yield w


async def converse(w: Watched, number: str, answer: str = "10") -> None:
    """A customer through the real path: an NPS start, its question on the carrier, the
    customer's answer through the inbound webhook, the reply on the carrier."""
    async with w.api.put(f"/v1/contacts/{number}", json={"fields": {"first_name": "Lee"}}) as r:
        assert r.status in (200, 201)
    async with w.api.post("/v1/flows/nps/start", json={"contacts": [number]}) as r:
        assert r.status == 202
    await w.carrier.next_message(number)
    assert await text_in(w, {"from": number, "to": "12345", "text": answer, "id": f"mo-{number}"}) == 202
    await w.carrier.next_message(number)


async def text_in(w: Watched, body: dict[str, str]) -> int:
    """The carrier's inbound webhook call, signed with the connector's webhook secret."""
    raw = json.dumps(body).encode()
    ts = int(time.time())
    mac = hmac.new(WEBHOOK_SECRET.encode(), b"%d." % ts + raw, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-Parley-Timestamp": str(ts),
        "X-Parley-Signature": f"sha256={mac}",
    }
    url = f"http://127.0.0.1:{w.rt.http_port}/v1/inbound/carrier"
    async with aiohttp.ClientSession() as s, s.post(url, data=raw, headers=headers) as r:
        return r.status


# -- the scrape itself -------------------------------------------------------------------------


async def test_a_scrape_names_the_build_and_shows_the_process_and_its_gc(watched: Watched) -> None:
    await converse(watched, "+447700900301")
    got = await watched.scrape()
    commit = COMMIT_FILE.read_text().strip() if COMMIT_FILE.exists() else "unknown"
    build = {"version": version("parley"), "commit": commit, "python": platform.python_version()}
    assert got["parley_build_info"] == {tuple(sorted(build.items())): 1.0}
    (info,) = got["python_info"]
    assert dict(info)["version"] == platform.python_version()
    # This process: started before the scrape, has used some CPU and holds some memory.
    assert got["process_cpu_seconds_total"][()] > 0
    assert got["process_resident_memory_bytes"][()] > 10 * 2**20
    assert got["process_open_fds"][()] > 0
    assert {dict(k)["generation"] for k in got["python_gc_collections_total"]} == {"0", "1", "2"}


async def test_latency_buckets_reach_past_the_connector_timeouts(watched: Watched) -> None:
    """A send that ran into its connector's timeout (45 s for the SMPP connector here, 10 s by
    default) lands in a finite bucket; 20 ms (the turn budget) is a bucket bound of its own."""
    await converse(watched, "+447700900302")
    got = await watched.scrape()

    def bounds(name: str, **labels: str) -> list[float]:
        return sorted(
            float(dict(k)["le"])
            for k in got[name]
            if all(dict(k).get(n) == v for n, v in labels.items()) and dict(k)["le"] != "+Inf"
        )

    assert bounds("parley_send_seconds_bucket", gateway="carrier")[-1] >= 2 * 45
    assert 0.02 in bounds("parley_turn_seconds_bucket")
    assert bounds("parley_turn_stage_seconds_bucket", stage="queue_wait")[-1] >= 60
    assert bounds("parley_http_request_seconds_bucket")[-1] >= 60


# -- the dashboard and the alert rules ask only for what is exported ---------------------------


def dashboard_exprs() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(f"panel {p['title']!r}", t["expr"]) for p in board["panels"] for t in p.get("targets", [])]


async def test_the_dashboard_and_the_alerts_ask_only_for_what_parley_exports(watched: Watched) -> None:
    """After traffic through the real path (turns, replies, receipts, a dead-lettered outcome
    event) every metric, label and label value the dashboard's queries and the alert rules use
    is in the engine's scrape."""
    for i in range(3):
        await converse(watched, f"+44770090031{i}")
    await eventually(lambda: watched.value("parley_webhook_deliveries_total", webhook="0", result="dead"))
    await eventually(
        lambda: watched.value(
            "parley_receipts_total", gateway="carrier", status="delivered", result="applied"
        )
    )
    await eventually(
        lambda: watched.value("parley_outbound_queue_seconds_count", gateway="carrier", lane="reply")
    )
    have = exported(await watched.scrape_text())
    problems = [p for where, expr in dashboard_exprs() for p in check_expr(expr, have, where)]
    problems += [
        p for rule in alert_rules() for p in check_expr(rule["expr"], have, f"alert {rule['alert']}")
    ]
    assert problems == []


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    """Importable as it is: a schema version, unique panel ids and positions, every query on the
    data source variable, the job and instance variables in every query."""
    board = json.loads(DASHBOARD.read_text())
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["title"] and board["uid"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert {"job", "instance"} <= set(variables)
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    for p in board["panels"]:
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}" and t["refId"]
            assert 'job=~"$job"' in t["expr"] and 'instance=~"$instance"' in t["expr"], t["expr"]
    titles = {p["title"] for p in board["panels"]}
    # The console Overview's panels, and the process's own.
    assert {"Turns/s", "Reply latency", "Inbound lanes", "Outbound lanes", "Gate decisions",
            "Rate on the wire", "Circuit", "SMPP binds up", "Workers live", "Shards", "CPU", "Memory",
            "GC collections"} <= titles  # fmt: skip


# -- what the alerts watch, moving as they expect ----------------------------------------------


async def test_an_smsc_going_away_shows_as_no_bind_not_as_no_series(watched: Watched) -> None:
    """ParleySmppBindsDown asks ``sum by (gateway) (parley_smpp_binds_up) == 0``: the series must
    stay, at 0, while the SMSC is away (a series that vanished would never be 0)."""
    assert await watched.value("parley_smpp_binds_up", gateway="smsc") == 1
    await watched.smsc.__aexit__(None, None, None)

    async def unbound() -> bool:
        return await watched.value("parley_smpp_binds_up", gateway="smsc") == 0

    await eventually(unbound, attempts=1000)


async def test_a_failing_provider_opens_the_circuit_until_it_recovers(watched: Watched) -> None:
    """ParleyCircuitOpen asks ``max by (gateway) (parley_circuit_open) == 1`` for 2 minutes: the
    gauge is 0 before, 1 for as long as the provider fails (probes do not flip it), 0 after."""
    assert await watched.value("parley_circuit_open", gateway="carrier") == 0
    watched.carrier.down = 503
    async with watched.api.put("/v1/contacts/+447700900320", json={"fields": {"first_name": "Lee"}}):
        pass
    async with watched.api.post("/v1/flows/nps/start", json={"contacts": ["+447700900320"]}) as r:
        assert r.status == 202

    async def is_open() -> bool:
        return await watched.value("parley_circuit_open", gateway="carrier") == 1

    await eventually(is_open, attempts=1000)
    probes = watched.carrier.attempts
    await eventually(lambda: asyncio.sleep(0, watched.carrier.attempts >= probes + 2), attempts=1000)
    assert await is_open()  # probed twice and failed: still open
    watched.carrier.down = 0
    await watched.carrier.next_message("+447700900320")

    async def closed() -> bool:
        return await watched.value("parley_circuit_open", gateway="carrier") == 0

    await eventually(closed, attempts=1000)


async def test_an_event_that_keeps_failing_counts_as_a_dead_letter(watched: Watched) -> None:
    """ParleyDeadLetters asks ``increase(parley_dead_letters_total[10m]) > 0``: the counter is
    there at 0 before the first (so increase() sees it) and counts the event moved to p:dead."""
    assert await watched.value("parley_dead_letters_total") == 0
    number = "+447700900330"
    stream = keys.inbound_stream(keys.shard_of(number, watched.rt.config.engine.shards))
    # A start whose parameters are not an object: every attempt at the turn fails.
    await watched.rt.store.redis.xadd(stream, {"k": "start", "c": number, "f": "nps", "p": "[1]", "ts": "0"})

    async def dead() -> float | None:
        return await watched.value("parley_dead_letters_total")

    assert await eventually(dead, attempts=1000) == 1
    assert await watched.rt.store.redis.xlen(keys.dead_letters()) == 1


async def test_intake_counts_each_accepted_text_once(watched: Watched) -> None:
    """ParleyIntakeStopped asks whether ``parley_inbound_total{result="accepted"}`` grew: each
    text taken counts once, and a provider resending the same text counts as a duplicate, so a
    retry loop does not look like traffic."""
    before = await watched.value("parley_inbound_total", gateway="carrier", result="accepted") or 0
    body = {"from": "+447700900340", "to": "12345", "text": "hello", "id": "mo-resent"}
    assert [await text_in(watched, body) for _ in range(3)] == [
        202,
        200,
        200,
    ]  # taken, then "already have it"
    got = await watched.scrape()
    assert got["parley_inbound_total"][(("gateway", "carrier"), ("result", "accepted"))] == before + 1
    assert got["parley_inbound_total"][(("gateway", "carrier"), ("result", "duplicate"))] == 2


# -- worker processes: each process's own figures ----------------------------------------------


async def test_with_worker_processes_each_process_shows_its_own_cpu_memory_and_gc(
    redis_url: str, carrier: SimulatedCarrier, tmp_path: Path
) -> None:
    """``parley run --workers 2``: /metrics on the HTTP process adds up the turns of every
    process, and shows the CPU, memory and GC of each process (label ``pid``): the main process
    and both workers. A worker that dies leaves the figures; its replacement is there."""
    from engine.core.redis_embedded import free_port
    from tests.test_processes import engine_config, parley_run

    config = engine_config(redis_url, carrier, free_port(), lease_ttl="1s")
    async with parley_run(config, tmp_path / "parley.yaml") as eng:
        health = await eng.until_healthy()

        def pids_of(got: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str) -> set[int]:
            return {int(dict(k)["pid"]) for k in got.get(name, {})}

        async def scrape() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
            async with eng.api.get("/metrics") as r:
                return series(await r.text())

        workers = {p["pid"] for p in health["worker_processes"].values()}
        everyone = workers | {health["pid"]}
        got: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for _ in range(100):  # a worker writes its figures when it starts, then every few seconds
            got = await scrape()
            if pids_of(got, "process_resident_memory_bytes") == everyone:
                break
            await asyncio.sleep(0.05)
        for name in (
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_start_time_seconds",
        ):
            assert pids_of(got, name) == everyone, name
        assert all(v > 10 * 2**20 for v in got["process_resident_memory_bytes"].values())
        assert {(dict(k)["generation"], int(dict(k)["pid"])) for k in got["python_gc_collections_total"]} == {
            (g, p) for g in "012" for p in everyone
        }
        assert len(got["parley_build_info"]) == 1 and len(got["python_info"]) == 1

        victim = health["worker_processes"]["0"]["pid"]
        os.kill(victim, signal.SIGKILL)
        for _ in range(200):
            health = await eng.health()
            now = {p["pid"] for p in health["worker_processes"].values() if p["running"]}
            got = await scrape()
            if (
                victim not in now
                and len(now) == 2
                and pids_of(got, "process_resident_memory_bytes") == now | {health["pid"]}
            ):
                break
            await asyncio.sleep(0.05)
        assert victim not in pids_of(got, "process_resident_memory_bytes")
        assert pids_of(got, "process_resident_memory_bytes") == now | {health["pid"]}


def test_a_dead_processs_open_circuit_no_longer_shows(tmp_path: Path) -> None:
    """Under several processes each writes its own values: a process (a worker with its senders)
    that died with a connector's circuit open must not hold ``parley_circuit_open`` at 1 once its
    supervisor has done the dead process's bookkeeping (engine/app/supervisor.py)."""
    import subprocess
    import sys

    from prometheus_client import multiprocess

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    child = (
        "from engine.core.metrics import Metrics\n"
        "m = Metrics()\n"
        "m.circuit('carrier', True)\n"
        "m.flush()\n"
        "import os; print(os.getpid())\n"
    )
    proc = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr

    def circuit() -> float | None:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        reg = CollectorRegistry()
        MultiProcessCollector(reg, str(tmp_path))  # type: ignore[no-untyped-call]
        return reg.get_sample_value("parley_circuit_open", {"gateway": "carrier"})

    assert circuit() == 1  # while it lives (or before anyone noticed), it shows
    multiprocess.mark_process_dead(int(proc.stdout.split()[-1]), str(tmp_path))  # type: ignore[no-untyped-call]
    assert circuit() is None
