"""The one object that owns Parley's resources, opened in order and closed in reverse.

    open:   flows -> Redis (embedded or configured) -> gateways -> senders -> caller
            -> outcome webhooks -> worker (in process, or N worker processes) -> HTTP
            -> more API processes on the same port
    close:  API processes -> HTTP (stop accepting) -> worker(s) (finish in-flight turns) -> webhooks
            -> caller -> senders (finish sends) -> gateways -> Redis -> embedded redis-server

Which of these a process opens is its role (``parley run --role``, docs/operations.md#roles): the
flags ``http``/``api`` (the HTTP API, with the connectors' webhooks), ``worker`` (turns, timers),
``caller`` (CRM calls, outcome webhooks) and ``senders`` (the send pipeline and a connector's own
sessions, e.g. SMPP binds). A process without the API still serves ``/healthz`` and ``/metrics``
when ``http`` is on (``api=False``).

Everything else receives the runtime (or the parts it needs) as an argument; there are no
module-level singletons.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.app.migrate import check_layout
from engine.app.singleton import OneAtATime
from engine.app.supervisor import Supervisor
from engine.conversation import intake
from engine.conversation.calls import Caller
from engine.conversation.worker import SENDERS_SUFFIX, Worker, worker_id
from engine.core import depths, keys
from engine.core.clock import Clock
from engine.core.config import Config, parse_cap
from engine.core.errors import ConfigError
from engine.core.leases import lease_holders, release_dead
from engine.core.metrics import Metrics
from engine.core.ports import Accepted, Submission
from engine.core.redis_embedded import EmbeddedRedis
from engine.core.store import Store
from engine.crm import sends
from engine.crm.campaigns import CampaignKeeper
from engine.crm.webhooks import Webhooks
from engine.flows import Flow, FlowRegistry
from engine.flows import versions as flow_versions
from engine.flows.campaigns import CampaignBook
from engine.flows.limits import Limits
from engine.governance.consent import Keywords
from engine.governance.quiet import QuietHours
from gateways import scripts as gateway_scripts
from gateways.base import Gateway
from gateways.registry import build_gateway, longest_send_timeout
from gateways.routing import Router, parse_rules
from gateways.sender import Sender, SenderLeases
from gateways.smpp import server_queue
from gateways.smpp.server import SmppServer, mo_owner

log = logging.getLogger(__name__)


class Runtime:
    """``async with Runtime(config) as rt:`` — a running engine."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        http: bool = True,
        worker: bool = True,
        senders: bool = True,
        caller: bool | None = None,
        ephemeral_redis: bool = False,
        worker_index: int = 0,
        worker_processes: bool = False,
        config_path: str | None = None,
        api: bool = True,
        reuse_port: bool = False,
        smpp_server: bool = True,
    ) -> None:
        """``worker``: run turns in this process, or (``worker_processes`` and ``engine.workers``
        > 1, as ``parley run`` does) in that many worker processes started with ``config_path``.
        ``caller`` (CRM calls, and outcome webhooks: with ``worker_processes``, under a lease, so
        in one process of all at a time) defaults to ``worker``. ``api``: the HTTP server serves the API
        (else only /healthz and /metrics); with ``worker_processes`` and ``engine.api_processes``
        > 1, that many API processes share its port. ``reuse_port``: listen with SO_REUSEPORT
        (an API process joining others on one port). ``smpp_server``: ESMEs bind into this
        process when ``smpp_server.listen`` is configured (role ``smpp-server``)."""
        self.config = config
        self.clock = clock or Clock()
        self.metrics = Metrics(longest_timeout=longest_send_timeout(config.gateways))
        self.flows = FlowRegistry({})
        #: One reload at a time: two loading side by side could finish in the wrong order.
        self._reloading = asyncio.Lock()
        gov = config.governance
        self.keywords = Keywords(gov.keywords, gov.messages, gov.default_language)
        self.quiet = QuietHours.from_config(
            gov.send_window, gov.send_windows, gov.holidays, gov.default_timezone, gov.quiet_jitter
        )
        #: The frequency caps as the commit script reads them ("limit:window ms:label;...").
        self.caps = _caps_arg(gov.caps)
        self.gateways: dict[str, Gateway] = {}
        self.router = Router([], [], "")
        self.embedded: EmbeddedRedis | None = None
        self.caller: Caller | None = None
        self.worker: Worker | None = None
        self.senders: dict[str, Sender] = {}
        #: Per connector: which shards' lanes of it this process reads (role ``sender:GW``).
        self.sender_leases: dict[str, SenderLeases] = {}
        #: The outcome webhooks' lease (``parley run``: they run in one process at a time).
        self.webhooks: OneAtATime | None = None
        self.supervisor: Supervisor | None = None
        #: The extra API processes on this process's port (``engine.api_processes`` > 1).
        self.api_supervisor: Supervisor | None = None
        self.http_port = 0
        self._want = {
            "http": http, "worker": worker, "senders": senders, "caller": worker if caller is None else caller
        }  # fmt: skip
        #: With worker processes the senders run in them, beside the turns (each on the lanes of
        #: the shards it leases), not here: the process that takes the HTTP intake then sends
        #: nothing, and the send work is spread over the worker processes.
        self._senders_in_workers = senders and worker and worker_processes and config.engine.workers > 1
        self._api = http and api
        self._smpp_server = smpp_server and bool(config.smpp_server.listen)
        #: ESMEs binding into Parley (gateways/smpp/server.py), when this process serves them.
        self.smpp_server: SmppServer | None = None
        self._reuse_port = reuse_port or (self._api and worker_processes and config.engine.api_processes > 1)
        #: What this process runs, as /healthz says it: api, worker, sender.
        self.roles = [
            r for r, on in (("api", self._api), ("worker", worker), ("sender", senders),
                            ("smpp-server", self._smpp_server)) if on
        ]  # fmt: skip
        self._worker_index = worker_index
        self._processes = worker_processes
        self._config_path = config_path
        self._ephemeral = ephemeral_redis
        self._stack = contextlib.AsyncExitStack()
        self._store: Store | None = None
        self._campaigns: CampaignKeeper | None = None

    @property
    def store(self) -> Store:
        assert self._store is not None, "runtime not started"
        return self._store

    @property
    def campaign_keeper(self) -> CampaignKeeper:
        assert self._campaigns is not None, "runtime not started"
        return self._campaigns

    @property
    def campaigns(self) -> CampaignBook:
        """The campaigns in force (``<flows_dir>/campaigns/*.yaml`` and the API's)."""
        return self._campaigns.book if self._campaigns is not None else CampaignBook()

    @property
    def redis_url(self) -> str:
        return self.config.redis.url or (self.embedded.url if self.embedded else "")

    async def __aenter__(self) -> Runtime:
        try:
            await self._open()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._stack.aclose()
        finally:
            self.metrics.flush()  # what the last turns and sends recorded reaches the values

    async def _open(self) -> None:
        cfg = self.config
        # Multiprocess mode: this process writes its CPU, memory and GC figures every few seconds.
        self._stack.enter_context(self.metrics.sampling())
        # Flows first: an invalid flow refuses start-up before anything is started.
        self.flows = await asyncio.to_thread(
            FlowRegistry.from_dir, cfg.engine.flows_dir, Limits.of(cfg.engine)
        )
        url = cfg.redis.url
        if not url:
            if self._ephemeral:
                tmp = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="parley-redis-"))
                self.embedded = EmbeddedRedis(Path(tmp), persistent=False)
            else:
                self.embedded = EmbeddedRedis(cfg.redis.embedded_dir, persistent=True)
            await self._stack.enter_async_context(self.embedded)
            url = self.embedded.url
        self._store = Store.connect(url, cfg.redis)
        self._stack.push_async_callback(self._store.close)
        gateway_scripts.install(self._store)
        await self._store.ping()
        await check_layout(self._store)  # an earlier release's data: refused, naming parley migrate
        await flow_versions.publish(self._store, self.flows)
        # A process that runs turns backfills the campaign files whose definition changed.
        self._campaigns = await self._stack.enter_async_context(
            CampaignKeeper(self, Path(cfg.engine.flows_dir) / "campaigns", set(self.flows.flows),
                           backfill_files=self._want["worker"])
        )  # fmt: skip
        for name, raw in cfg.gateways.items():
            gw = build_gateway(name, raw)
            gw.attach(self, active=self._want["senders"] and not self._senders_in_workers)
            self.gateways[name] = await self._stack.enter_async_context(gw)
        can_send = [n for n, g in self.gateways.items() if g.can_send]
        self.router = Router(parse_rules(cfg.routing, set(can_send)), can_send, cfg.engine.default_gateway)
        if self._want["senders"] and not self._senders_in_workers:
            # A lease set per connector (role "sender:GW"): the shards whose lanes of it this
            # process reads. A connector that cannot send from here (an SMPP connector holding no
            # bind) holds none, so the processes that can send read its lanes.
            # Beside a worker, named after it, so its supervisor releases both when it dies.
            me = worker_id(self._worker_index) + SENDERS_SUFFIX if self._want["worker"] else None
            for name, gw in self.gateways.items():
                if gw.can_send:
                    leases = SenderLeases(self, me, role=f"sender:{name}", gate=gw.sendable)
                    self.sender_leases[name] = await self._stack.enter_async_context(leases)
                    sender = Sender(self, gw, leases)
                    self.senders[name] = await self._stack.enter_async_context(sender)
        if self._smpp_server:
            self.smpp_server = await self._stack.enter_async_context(SmppServer(self, cfg.smpp_server))
        if self._want["caller"]:
            self.caller = await self._stack.enter_async_context(Caller(self))
            if cfg.crm.webhooks and self._processes:
                # Outcome webhooks run where the caller does, in one process of all of them:
                # whichever holds their lease (two dispatchers would split a contact's events).
                self.webhooks = await self._stack.enter_async_context(
                    OneAtATime(self.store, "webhooks", cfg.engine.lease_ttl, lambda: Webhooks(self))
                )
            elif cfg.crm.webhooks:
                await self._stack.enter_async_context(Webhooks(self))
        if self._want["worker"] and self._processes and cfg.engine.workers > 1:
            self.supervisor = await self._stack.enter_async_context(
                Supervisor(cfg.engine.workers, url, self._config_path, cfg.engine.shutdown_timeout,
                           self._release_leases, extra=("--senders",) if self._senders_in_workers else ())
            )  # fmt: skip
        elif self._want["worker"]:
            self.worker = await self._stack.enter_async_context(Worker(self, self._worker_index))
        if self._want["http"]:
            await self._start_http()
        if self._api and self._processes and cfg.engine.api_processes > 1:
            self.api_supervisor = await self._stack.enter_async_context(
                Supervisor(cfg.engine.api_processes - 1, url, self._config_path, cfg.engine.shutdown_timeout,
                           role="api", first=1, env={"PARLEY_HTTP_PORT": str(self.http_port)})
            )  # fmt: skip
        log.info(
            "parley started flows=%s gateways=%s redis=%s http=%s",
            ",".join(sorted(self.flows.flows)) or "-",
            ",".join(sorted(self.gateways)) or "-",
            "embedded" if self.embedded else "configured",
            f"{cfg.http.host}:{self.http_port}" if self._want["http"] else "off",
        )

    async def _start_http(self) -> None:
        from engine.api.app import build_app

        app = build_app(self, ops_only=not self._api)
        if self._api:
            from engine.console.app import add_console

            add_console(app, self)
        runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=self.config.engine.shutdown_timeout,
        )
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        host, port = self.config.http.host, self.config.http.port
        site = web.TCPSite(runner, host, port, reuse_port=self._reuse_port or None)
        try:
            await site.start()
        except OSError as exc:  # one line, not a traceback: usually another Parley on the port
            problem = (
                f"{host}:{port} is in use (another Parley, or another server, listens there)"
                if exc.errno == errno.EADDRINUSE
                else f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            )
            raise ConfigError("http.port", problem) from None
        self.http_port = runner.addresses[0][1]
        if self._api and not self.config.api.keys:
            log.warning("no API keys configured (api.keys / PARLEY_API_KEYS): every /v1 request gets 401")

    async def _release_leases(self, worker_id: str) -> None:
        """Give up a dead worker's shards in its name (the supervisor saw it die), and its senders'."""
        cfg = self.config.engine
        await release_dead(self.store, worker_id, cfg.shards, cfg.lease_ttl)
        if self._senders_in_workers:
            senders = worker_id + SENDERS_SUFFIX
            for name, gw in self.gateways.items():
                if gw.can_send:
                    await release_dead(self.store, senders, cfg.shards, cfg.lease_ttl, role=f"sender:{name}")

    async def accept_inbound(
        self, *, gateway: str, contact: str, to: str, text: str, provider_id: str
    ) -> Accepted:
        """The connectors' port onto intake (engine/core/ports.py: GatewayHost). A text to a
        number an SMPP server account owns (with ``mo: binds``) goes to that account's queue for
        its binds instead (gateways/smpp/server_queue.py), once per (gateway, provider id)."""
        owner = mo_owner(self.config.smpp_server, to) if self.config.smpp_server.accounts else None
        if owner is not None and owner.mo == "binds":
            fresh, entry = await server_queue.push_mo(
                self, owner, gateway=gateway, provider_id=provider_id, contact=contact, to=to, text=text
            )
            return Accepted("accepted" if fresh else "duplicate", entry)
        return await intake.accept_inbound(
            self, gateway=gateway, contact=contact, to=to, text=text, provider_id=provider_id
        )

    def new_message_id(self, to: str) -> str:
        """The SMPP server's port (engine/core/ports.py: SmppServerHost): an id for a message to ``to``."""
        return sends.new_id(keys.shard_of(to, self.config.engine.shards), self.clock.now_ms())

    async def submit(self, message: Submission) -> str:
        """The SMPP server's port: accept a message as POST /v1/messages does; its id."""
        req = sends.SendRequest(
            to=message.to, text=message.text, send_at=message.send_at, validity_s=message.validity_s,
            message_id=message.message_id, smpp=message.smpp, priority=message.priority,
            receipts=message.receipts, sender=message.sender,
        )  # fmt: skip
        (acc,) = await sends.accept(self, [req])
        return acc.id

    def caps_for(self, flow: Flow | None) -> str:
        """The caps a flow's business-started sends are held to: its own, else the global ones."""
        if flow is None or flow.caps is None:
            return self.caps
        return _caps_arg(flow.caps)

    async def reload_flows(self) -> FlowRegistry:
        """Load the flows directory again. New conversations take the new files; conversations
        in progress finish on their version. An invalid set raises FlowErrors and changes nothing."""
        async with self._reloading:
            # Off the event loop: a big file takes seconds to parse, and serving goes on meanwhile.
            fresh = await asyncio.to_thread(
                FlowRegistry.from_dir, self.config.engine.flows_dir, Limits.of(self.config.engine)
            )
            fresh.succeed(self.flows)
            if self._campaigns is not None:  # campaign files are read with the flows, all or nothing
                self._campaigns.reload_files(set(fresh.flows))
            await flow_versions.publish(self.store, fresh)
            self.flows = fresh
        log.info("flows reloaded: %s", ", ".join(f"{f.name}@{f.digest}" for f in fresh.flows.values()))
        return fresh

    def _sent_here(self) -> list[str]:
        """The connectors this process (or, with worker processes, its workers) sends through."""
        if self._senders_in_workers:
            return [n for n, g in self.gateways.items() if g.can_send]
        return list(self.senders)

    async def refresh_stream_metrics(self) -> None:
        """Read each shard's backlog, each connector's lanes (every shard's, summed per gateway
        and lane) and the live workers from Redis into the gauges (one round trip; called when
        /metrics is scraped, so it shows every worker process's shards)."""
        async with self.store.redis.pipeline(transaction=False) as pipe:
            query = depths.DepthQuery(pipe, self.config.engine.shards, self._sent_here())
            pipe.zcount(keys.live("worker"), int(time.time() * 1000), "+inf")
            res = await pipe.execute(raise_on_error=False)
        got = query.read(res)
        for (gw, lane), per_shard in got.lanes.items():
            if None not in per_shard:
                self.metrics.backlog(gw, lane, sum(d for d in per_shard if d is not None))
        now_ms = self.clock.now_ms()
        for shard, d in enumerate(got.shards):
            if d.length is None:
                continue
            waiting = d.pending or 0
            oldest = 0.0 if d.first_ms is None else max(0.0, (now_ms - d.first_ms) / 1000)
            self.metrics.streams(shard, max(0, d.length - waiting), waiting, oldest)
        if not isinstance(res[-1], Exception):
            self.metrics.workers_live(int(res[-1]))

    async def health(self) -> dict[str, Any]:
        """What /healthz reports: Redis reachable, workers (senders) holding every shard in a process
        that runs workers (senders), gateways configured."""
        redis_ok = True
        holders: dict[int, str] = {}
        sending: dict[str, dict[int, str]] = {}
        hooks: dict[int, str] = {}
        try:
            await self.store.redis.ping()
            holders = await lease_holders(self.store)
            for name, gw in self.gateways.items():
                if gw.can_send:
                    sending[name] = await lease_holders(self.store, role=f"sender:{name}")
            if self.config.crm.webhooks:
                hooks = await lease_holders(self.store, role="webhooks")
        except Exception:
            redis_ok = False
        by_worker: dict[str, list[int]] = {}
        for shard, who in sorted(holders.items()):
            by_worker.setdefault(who, []).append(shard)
        by_sender: dict[str, dict[str, list[int]]] = {}
        for gw_name, held in sending.items():
            mine = by_sender.setdefault(gw_name, {})
            for shard, who in sorted(held.items()):
                mine.setdefault(who, []).append(shard)
        unread = [s for s in range(self.config.engine.shards) if s not in holders]
        worker_ok = self.worker.healthy if self.worker else None
        runs_workers = self.worker is not None or self.supervisor is not None
        # Per connector, the shards whose lanes no process reads now.
        unsent = {
            gw: missing
            for gw, held in sending.items()
            if (missing := [s for s in range(self.config.engine.shards) if s not in held])
        }
        runs_senders = bool(self.sender_leases) or self._senders_in_workers
        ok = (
            redis_ok
            and worker_ok is not False
            and not (runs_workers and unread)
            and not (runs_senders and unsent)
        )
        out: dict[str, Any] = {
            "status": "ok" if ok else "degraded",
            "roles": self.roles,
            "pid": os.getpid(),
            "redis": "ok" if redis_ok else "unreachable",
            "worker": {True: "ok", False: "waiting for redis", None: "off"}[worker_ok],
            "workers": by_worker,
            # Per connector, which sender process reads which shards' lanes (gateways/sender.py).
            "senders": by_sender,
            "unread_shards": unread if redis_ok else None,
            "unsent_shards": unsent if redis_ok else None,
            "flows": sorted(self.flows.flows),
            "gateways": {n: type(g).__name__ for n, g in self.gateways.items()},
        }
        if self.smpp_server is not None:
            out["smpp_server"] = self.smpp_server.health()
        details = {n: h for n, g in self.gateways.items() if (h := g.health()) is not None}
        if details:
            out["gateway_state"] = details
        if self.config.crm.webhooks:  # which process sends the outcome webhooks (None: none now)
            out["webhooks"] = hooks.get(0)
        if self.supervisor is not None:
            out["worker"] = "processes"
            out["worker_processes"] = self.supervisor.report()
        if self.api_supervisor is not None:
            out["api_processes"] = self.api_supervisor.report()
        return out


def _caps_arg(caps: list[str]) -> str:
    return ";".join(f"{n}:{ms}:{text.strip()}" for text in caps for n, ms in [parse_cap(text)])
