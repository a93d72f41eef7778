"""Process roles (``parley run --role api|worker|sender|all``) and API processes sharing one
port (``--api-processes N``), as real processes an operator would start."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from engine.app.cli import main
from engine.app.settings import load_config
from engine.core.errors import ConfigError
from engine.core.redis_embedded import free_port
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import API_KEY, ROOT, run_parley, serve

PROMOTER = "Wonderful, thank you! What do you like most about us?"


class Proc:
    """A ``parley run`` child process and its HTTP port."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc, self.port = proc, port
        #: Killed on purpose by the test: its exit status is not checked.
        self.killed = False

    async def get(self, path: str, *, fresh: bool = True) -> tuple[int, dict[str, Any]]:
        """GET ``path`` on a new connection (so SO_REUSEPORT may hand it to any process)."""
        async with (
            aiohttp.ClientSession(
                f"http://127.0.0.1:{self.port}",
                headers={"Authorization": f"Bearer {API_KEY}"},
                connector=aiohttp.TCPConnector(force_close=fresh),
            ) as http,
            http.get(path) as r,
        ):
            return r.status, await r.json()

    async def until(self, probe: Any, timeout: float = 30) -> dict[str, Any]:
        """/healthz until ``probe(body)`` holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        body: dict[str, Any] = {}
        while loop.time() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                _, body = await self.get("/healthz")
                if probe(body):
                    return body
            if self.proc.returncode is not None:
                raise AssertionError(f"parley exited with {self.proc.returncode}")
            await asyncio.sleep(0.05)
        raise AssertionError(f"not reached within {timeout}s: {body}")

    async def pids(self, want: int, tries: int = 200) -> set[int]:
        """The pids answering /healthz on new connections, until ``want`` distinct ones answered."""
        seen: set[int] = set()
        for _ in range(tries):
            _, body = await self.get("/healthz")
            seen.add(body["pid"])
            if len(seen) >= want:
                break
        return seen


def config(redis_url: str, port: int, **engine: Any) -> dict[str, Any]:
    return {
        "redis": {"url": redis_url},
        "http": {"port": port},
        "api": {"keys": [API_KEY]},
        "engine": {"flows_dir": str(ROOT / "rules"), "shards": 4, **engine},
        "log": {"level": "warning"},
    }


@contextlib.asynccontextmanager
async def parley(
    args: list[str], cfg: dict[str, Any], path: Path, port: int | None = None
) -> AsyncIterator[Proc]:
    """``parley --config PATH ARGS...`` (HTTP on ``port``, default the config's); stopped with
    SIGTERM at the end, and it must exit 0."""
    path.write_text(yaml.safe_dump(cfg))  # noqa: ASYNC240 - before the process starts
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.app.cli", "--config", str(path), *args,
        cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    p = Proc(proc, port or cfg["http"]["port"])
    try:
        yield p
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0 or p.killed, err.decode()[-3000:]


def gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped counts: its sockets are closed)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except (FileNotFoundError, IndexError):
        return True


# The options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ["--role", "router"],
            {},
            "--role: must be all, or api, worker, sender, smpp-server joined by commas",
        ),
        (
            ["--role", "api", "--workers", "2"],
            {},
            "--workers: starts worker processes, but this process's role is api",
        ),
        (["--role", "worker", "--api-processes", "2"], {}, "--api-processes: starts API processes"),
        (["--api-processes", "0"], {}, "--api-processes: must be 1..64, got 0"),
        (["--port", "70000"], {}, "--port: must be 0..65535, got 70000"),
        (["--role", "worker"], {"PARLEY_REDIS_URL": ""}, "redis.url: role worker shares work"),
        ([], {"PARLEY_ENGINE_ROLE": "api,router"}, "engine.role: must be all, or api"),
    ],
)
def test_run_refuses_roles_and_counts_that_cannot_work_in_one_line(
    args: list[str], env: dict[str, str], message: str, redis_url: str
) -> None:
    proc = run_parley("run", *args, env={"PARLEY_REDIS_URL": redis_url, **env})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"parley: config: {message}"), proc.stderr


def test_role_and_api_processes_are_configuration_too() -> None:
    cfg = load_config(env={"PARLEY_ENGINE_ROLE": "api,sender", "PARLEY_ENGINE_API_PROCESSES": "4"})
    assert (cfg.engine.role, cfg.engine.api_processes) == ("api,sender", 4)
    assert (load_config(env={}).engine.role, load_config(env={}).engine.api_processes) == ("all", 1)
    with pytest.raises(ConfigError, match=r"engine\.api_processes: must be 1\.\.64"):
        load_config(env={"PARLEY_ENGINE_API_PROCESSES": "65"})


def test_help_lists_the_roles(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "--role ROLE" in out and "--api-processes N" in out and "--workers N" in out


# API processes sharing a port --------------------------------------------------------------------


async def test_api_processes_share_one_port_and_a_killed_one_is_replaced_while_the_port_answers(
    redis_url: str, tmp_path: Path
) -> None:
    """``parley run --role api --api-processes 2``: two processes answer on one port (the kernel
    spreads new connections over both); one SIGKILLed is started again at once, and no request
    fails meanwhile (the other answers them all)."""
    port = free_port()
    async with parley(
        ["run", "--role", "api", "--api-processes", "2"], config(redis_url, port), tmp_path / "p.yaml"
    ) as p:
        health = await p.until(lambda h: h.get("api_processes", {}).get("1", {}).get("ready"))
        assert health["roles"] == ["api"]
        child = health["api_processes"]["1"]["pid"]
        assert await p.pids(2) == {p.proc.pid, child}
        # Both processes serve the whole API, not only /healthz.
        for _ in range(10):
            status, body = await p.get("/v1/openapi.json")
            assert status == 200 and "/v1/flows/{flow}/start" in body["paths"]

        os.kill(child, signal.SIGKILL)
        for _ in range(1000):  # dead, its socket closed (the supervisor may not have reaped it yet)
            if gone(child):
                break
            await asyncio.sleep(0.005)
        answered = 0
        while True:  # every request is answered while the child is dead and restarting
            status, health = await p.get("/healthz")
            assert status == 200, health
            assert health["pid"] != child
            answered += 1
            if health["pid"] == p.proc.pid:  # the main process: it says how its API process is
                new = health["api_processes"]["1"]
                if new["pid"] != child and new["ready"]:
                    break
            await asyncio.sleep(0.01)
        assert answered > 1
        assert new["restarts"] == 1 and new["restart_wait"] == 0.0 and new["running"]
        assert await p.pids(2) == {p.proc.pid, new["pid"]}
    # Stopping stops the API processes too.
    assert gone(new["pid"])


async def test_one_api_process_alone_refuses_a_port_in_use(redis_url: str, tmp_path: Path) -> None:
    """Without --api-processes the port is not shared: a second Parley on it is refused in one
    line, as before (SO_REUSEPORT is only for API processes of one Parley)."""
    port = free_port()
    async with parley(["run", "--role", "api"], config(redis_url, port), tmp_path / "p.yaml") as p:
        await p.until(lambda h: h["status"] == "ok")
        proc = run_parley(
            "run", "--role", "api", env={"PARLEY_REDIS_URL": redis_url, "PARLEY_HTTP_PORT": str(port)}
        )
        assert proc.returncode == 2
        assert f"127.0.0.1:{port} is in use" in proc.stderr


# Roles in separate processes ---------------------------------------------------------------------


@pytest.mark.timeout(120)  # four processes start on a 2-core machine shared with other work
async def test_api_worker_and_senders_in_separate_processes_answer_a_text(
    redis_url: str, carrier: SimulatedCarrier, tmp_path: Path
) -> None:
    """One ``--role api``, one ``--role worker`` and two ``--role sender`` processes on one Redis,
    as on four hosts: texts into the API process get their replies at the carrier; each
    process's /healthz says what it runs; the two senders split the shards' outbound lanes, and
    when one is killed (no supervisor watches it, as on another host) the other takes its shards
    once its leases run out and the replies keep coming."""
    ports = {name: free_port() for name in ("api", "worker", "sender0", "sender1")}
    cfg = config(redis_url, ports["api"], lease_ttl="1s")
    cfg["gateways"] = {"carrier": {"type": "http", "url": carrier.url, "sender": "12345"}}
    path = tmp_path / "parley.yaml"
    async with contextlib.AsyncExitStack() as stack:
        procs: dict[str, Proc] = {}
        for name, role in (
            ("api", "api"),
            ("worker", "worker"),
            ("sender0", "sender"),
            ("sender1", "sender"),
        ):
            args = ["run", "--role", role, "--port", str(ports[name])]
            procs[name] = await stack.enter_async_context(parley(args, cfg, path, ports[name]))
        api, worker, senders = procs["api"], procs["worker"], [procs["sender0"], procs["sender1"]]

        health = await api.until(lambda h: h["status"] == "ok")
        assert health["roles"] == ["api"] and health["worker"] == "off"
        health = await worker.until(
            lambda h: sorted(s for v in h["workers"].values() for s in v) == [0, 1, 2, 3]
        )
        assert health["roles"] == ["worker"] and health["worker"] == "ok"
        health = await senders[0].until(
            lambda h: sorted(map(len, h["senders"]["carrier"].values())) == [2, 2]
        )
        assert health["roles"] == ["sender"] and health["status"] == "ok"
        assert sorted(len(s) for s in health["senders"]["carrier"].values()) == [2, 2]
        # Only the api process serves the API; the others serve /healthz and /metrics.
        assert (await api.get("/v1/openapi.json"))[0] == 200
        for p in (worker, *senders):
            assert (await p.get("/v1/openapi.json"))[0] == 404
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{p.port}/metrics") as r:
                assert r.status == 200 and "parley_" in await r.text()

        url = f"http://127.0.0.1:{api.port}/v1/inbound/carrier"
        numbers = [f"+4477009{i:05d}" for i in range(20)]
        for n in numbers:
            await carrier.text_in(url, API_KEY, n, "NPS")
        for n in numbers:
            assert "0 (not at all) to 10" in (await carrier.next_message(n, timeout=20)).text

        # A sender dies; the other takes its shards when its leases run out (1 s here).
        os.kill(senders[1].proc.pid, signal.SIGKILL)
        senders[1].killed = True
        await senders[1].proc.wait()
        for n in numbers:
            await carrier.text_in(url, API_KEY, n, "9")
        for n in numbers:
            assert (await carrier.next_message(n, timeout=20)).text == PROMOTER
        health = await senders[0].until(lambda h: len(h["senders"]["carrier"]) == 1 and h["status"] == "ok")
        assert list(health["senders"]["carrier"].values()) == [[0, 1, 2, 3]] and health["unsent_shards"] == {}
        assert len(carrier.received) == 2 * len(numbers)  # nothing sent twice


@pytest.mark.timeout(120)
async def test_outcome_webhooks_run_in_one_worker_process_and_move_when_it_dies(
    redis_url: str, carrier: SimulatedCarrier, tmp_path: Path
) -> None:
    """Two ``--role worker`` processes with an outcome webhook: one dispatcher sends it (the
    lease holder; two would split a contact's events), each event once; when that process is
    SIGKILLed the other takes the webhook over and the events keep coming, in order."""
    hits: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        hits.append({**await request.json(), "event_id": request.headers["X-Parley-Event-Id"]})
        return web.Response(status=204)

    def types(contact: str) -> list[str]:
        """The contact's events in the order they came, each once (a dispatcher killed between a
        2xx and its acknowledgement leaves the event to be sent again: at least once)."""
        seen: dict[str, str] = {}
        for h in hits:
            if h["contact"] == contact:
                seen.setdefault(h["event_id"], h["type"])
        return list(seen.values())

    ports = {name: free_port() for name in ("api", "sender", "w0", "w1")}
    async with serve(("POST", "/hook", hook)) as crm, contextlib.AsyncExitStack() as stack:
        cfg = config(redis_url, ports["api"], lease_ttl="1s")
        cfg["gateways"] = {"carrier": {"type": "http", "url": carrier.url, "sender": "12345"}}
        cfg["crm"] = {
            "webhooks": [{"url": f"{crm}/hook", "secret": "s" * 20, "events": ["started", "replied"]}]
        }
        path = tmp_path / "parley.yaml"
        procs: dict[str, Proc] = {}
        for name, role in (("api", "api"), ("sender", "sender"), ("w0", "worker"), ("w1", "worker")):
            args = ["run", "--role", role, "--port", str(ports[name])]
            procs[name] = await stack.enter_async_context(parley(args, cfg, path, ports[name]))
        health = await procs["w0"].until(lambda h: h["status"] == "ok" and len(h["workers"]) == 2)
        holder = health["webhooks"]
        assert holder is not None and holder.endswith("-webhooks")
        running = next(n for n in ("w0", "w1") if f"-{procs[n].proc.pid}-" in holder)
        other = "w1" if running == "w0" else "w0"

        await procs["api"].until(lambda h: True)  # the API process listens (it may start last)
        url = f"http://127.0.0.1:{ports['api']}/v1/inbound/carrier"
        numbers = [f"+4477007{i:05d}" for i in range(10)]
        for n in numbers:
            await carrier.text_in(url, API_KEY, n, "NPS")
        for n in numbers:
            await carrier.next_message(n, timeout=20)
        for _ in range(200):
            if len(hits) >= len(numbers):
                break
            await asyncio.sleep(0.05)
        assert sorted((h["contact"], h["type"]) for h in hits) == sorted((n, "started") for n in numbers)
        assert len({h["event_id"] for h in hits}) == len(numbers)  # one dispatcher: each event once

        os.kill(procs[running].proc.pid, signal.SIGKILL)
        procs[running].killed = True
        health = await procs[other].until(
            lambda h: h["webhooks"] and f"-{procs[other].proc.pid}-" in h["webhooks"]
        )
        for n in numbers:
            await carrier.text_in(url, API_KEY, n, "9")
        for n in numbers:
            assert (await carrier.next_message(n, timeout=20)).text == PROMOTER
        for _ in range(200):
            if {h["contact"] for h in hits if h["type"] == "replied"} == set(numbers):
                break
            await asyncio.sleep(0.05)
        for n in numbers:
            assert types(n) == ["started", "replied"], hits


@pytest.mark.timeout(120)
async def test_one_parley_supervises_worker_and_api_processes_together(
    redis_url: str, carrier: SimulatedCarrier, tmp_path: Path
) -> None:
    """``parley run --workers 2 --api-processes 2`` (role all): texts into the shared port are
    answered; /healthz lists both kinds of process; SIGHUP reloads the flows in every one of
    them (none dies of it); SIGTERM stops every one of them, exit 0."""
    flows = tmp_path / "flows"
    flows.mkdir()
    shutil.copy(ROOT / "rules" / "nps.yaml", flows / "nps.yaml")
    cfg = config(redis_url, free_port(), flows_dir=str(flows))
    cfg["gateways"] = {"carrier": {"type": "http", "url": carrier.url, "sender": "12345"}}
    async with parley(["run", "--workers", "2", "--api-processes", "2"], cfg, tmp_path / "p.yaml") as p:
        health = await p.until(
            lambda h: (
                h["status"] == "ok"
                and all(w["ready"] for w in h.get("worker_processes", {"": {"ready": False}}).values())
                and h.get("api_processes", {}).get("1", {}).get("ready")
                and len(h["workers"]) == 2
            )
        )
        assert health["roles"] == ["api", "worker", "sender"] and health["worker"] == "processes"
        children = [w["pid"] for w in health["worker_processes"].values()] + [
            health["api_processes"]["1"]["pid"]
        ]
        assert await p.pids(2) == {p.proc.pid, health["api_processes"]["1"]["pid"]}
        url = f"http://127.0.0.1:{p.port}/v1/inbound/carrier"
        numbers = [f"+4477006{i:05d}" for i in range(10)]
        for n in numbers:
            await carrier.text_in(url, API_KEY, n, "NPS")
        for n in numbers:
            assert "0 (not at all) to 10" in (await carrier.next_message(n, timeout=20)).text

        shutil.copy(ROOT / "rules" / "csat.yaml", flows / "csat.yaml")
        p.proc.send_signal(signal.SIGHUP)
        for _ in range(200):  # both API processes serve the new flow
            answers = [await p.get("/healthz") for _ in range(8)]
            if (
                all("csat" in body["flows"] for _, body in answers)
                and len({b["pid"] for _, b in answers}) == 2
            ):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"not every API process reloaded: {answers}")
        health = await p.until(lambda h: h["pid"] == p.proc.pid)  # the main process says how the others are
        assert {w["restarts"] for w in health["worker_processes"].values()} == {0}
        assert health["api_processes"]["1"]["restarts"] == 0
    assert all(gone(pid) for pid in children)


@pytest.mark.timeout(120)
async def test_smpp_binds_live_in_the_sender_process_and_its_texts_reach_the_worker(
    redis_url: str, tmp_path: Path
) -> None:
    """``parley smsc-sim``, and Parley as ``--role api``, ``--role worker`` and ``--role sender``
    processes with a ``type: smpp`` connector: only the sender binds; a customer's MO arrives on
    that bind, the worker process answers it, and the answer leaves through the same bind."""
    smpp_port, control = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.app.cli", "smsc-sim", "--port", str(smpp_port), "--control-port", str(control),
        "--system-id", "acme01", "--password", "s3cret", "--dlr-delay", "0.01",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    ports = {name: free_port() for name in ("api", "worker", "sender")}
    cfg = config(redis_url, ports["api"])
    cfg["gateways"] = {"carrier": {"type": "smpp", "host": "127.0.0.1", "port": smpp_port, "system_id": "acme01",
                                   "password": "s3cret", "sender": "12345", "reconnect_delay": "100ms"}}  # fmt: skip
    try:
        async with (
            contextlib.AsyncExitStack() as stack,
            aiohttp.ClientSession(f"http://127.0.0.1:{control}") as smsc,
        ):
            procs = {}
            for role in ("api", "worker", "sender"):
                args = ["run", "--role", role, "--port", str(ports[role])]
                procs[role] = await stack.enter_async_context(
                    parley(args, cfg, tmp_path / "p.yaml", ports[role])
                )
            for p in procs.values():
                await p.until(lambda h: h["status"] == "ok")

            async def text(body: str) -> None:
                for _ in range(400):  # until the sender has bound
                    with contextlib.suppress(aiohttp.ClientError):
                        async with smsc.post(
                            "/mo", json={"from": "447700900123", "to": "12345", "text": body}
                        ) as r:
                            if r.status == 200:
                                assert (await r.json())["statuses"] == [0]
                                return
                    await asyncio.sleep(0.05)
                raise AssertionError("no bind to deliver to")

            async def received(n: int) -> list[dict[str, Any]]:
                for _ in range(400):
                    async with smsc.get("/received") as r:
                        got: list[dict[str, Any]] = await r.json()
                    if len(got) >= n:
                        return got
                    await asyncio.sleep(0.05)
                raise AssertionError(f"the SMSC did not receive {n} messages")

            await text("NPS")
            assert "0 (not at all) to 10" in (await received(1))[0]["text"]
            await text("9")
            assert (await received(2))[1]["text"] == PROMOTER
            async with smsc.get("/stats") as r:
                assert (await r.json())["binds_ok"] == 1  # the sender's; the api and worker do not bind
            _, health = await procs["sender"].get("/healthz")
            assert health["gateway_state"]["carrier"]["bound"] == 1
            for role in ("api", "worker"):
                _, health = await procs[role].get("/healthz")
                state = health["gateway_state"]["carrier"]
                assert state["binds"] == {} and state["bound"] == 0
                assert state.get("bind_leases", {"held": []})["held"] == []  # takes no bind lease either
    finally:
        if sim.returncode is None:
            sim.send_signal(signal.SIGTERM)
        await asyncio.wait_for(sim.communicate(), 30)
