"""The one object that owns Parley's resources, opened in order and closed in reverse.

    open:   flows -> Redis (embedded or configured) -> gateways -> senders -> worker -> HTTP
    close:  HTTP (stop accepting) -> worker (finish in-flight turns) -> senders (finish sends)
            -> gateways -> Redis -> embedded redis-server

Everything else receives the runtime (or the parts it needs) as an argument; there are no
module-level singletons.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

from engine import flow_versions
from engine.calls import Caller
from engine.clock import Clock
from engine.config import Config
from engine.flows import FlowRegistry
from engine.metrics import Metrics
from engine.redis_embedded import EmbeddedRedis
from engine.store import Store
from engine.worker import Worker
from gateways.base import Gateway
from gateways.registry import build_gateway
from gateways.sender import Sender

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
        ephemeral_redis: bool = False,
    ) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.metrics = Metrics()
        self.flows = FlowRegistry({})
        self.gateways: dict[str, Gateway] = {}
        self.embedded: EmbeddedRedis | None = None
        self.worker: Worker | None = None
        self.senders: dict[str, Sender] = {}
        self.http_port = 0
        self._want = {"http": http, "worker": worker, "senders": senders}
        self._ephemeral = ephemeral_redis
        self._stack = contextlib.AsyncExitStack()
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        assert self._store is not None, "runtime not started"
        return self._store

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
        await self._stack.aclose()

    async def _open(self) -> None:
        cfg = self.config
        # Flows first: an invalid flow refuses start-up before anything is started.
        self.flows = FlowRegistry.from_dir(cfg.engine.flows_dir)
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
        await self._store.ping()
        await flow_versions.publish(self._store, self.flows)
        for name, raw in cfg.gateways.items():
            self.gateways[name] = await self._stack.enter_async_context(build_gateway(name, raw))
        if self._want["senders"]:
            for name, gw in self.gateways.items():
                if gw.can_send:
                    self.senders[name] = await self._stack.enter_async_context(Sender(self, gw))
        if self._want["worker"]:
            await self._stack.enter_async_context(Caller(self))
            self.worker = await self._stack.enter_async_context(Worker(self))
        if self._want["http"]:
            await self._start_http()
        log.info(
            "parley started flows=%s gateways=%s redis=%s http=%s",
            ",".join(sorted(self.flows.flows)) or "-",
            ",".join(sorted(self.gateways)) or "-",
            "embedded" if self.embedded else "configured",
            f"{cfg.http.host}:{self.http_port}" if self._want["http"] else "off",
        )

    async def _start_http(self) -> None:
        from engine.api.app import build_app

        runner = web.AppRunner(
            build_app(self), access_log=None, shutdown_timeout=self.config.engine.shutdown_timeout
        )
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, self.config.http.host, self.config.http.port)
        await site.start()
        self.http_port = runner.addresses[0][1]
        if not self.config.api.keys:
            log.warning("no API keys configured (api.keys / PARLEY_API_KEYS): every /v1 request gets 401")

    async def reload_flows(self) -> FlowRegistry:
        """Load the flows directory again. New conversations take the new files; conversations
        in progress finish on their version. An invalid set raises FlowErrors and changes nothing."""
        fresh = FlowRegistry.from_dir(self.config.engine.flows_dir)
        fresh.succeed(self.flows)
        await flow_versions.publish(self.store, fresh)
        self.flows = fresh
        log.info("flows reloaded: %s", ", ".join(f"{f.name}@{f.digest}" for f in fresh.flows.values()))
        return fresh

    def reply_gateway(self, inbound_gateway: str) -> str:
        """The gateway that sends a reply: the one the text came in on if it can send, else the default."""
        gw = self.gateways.get(inbound_gateway)
        if gw is not None and gw.can_send:
            return inbound_gateway
        default = self.config.engine.default_gateway
        if default:
            return default
        senders = [n for n, g in self.gateways.items() if g.can_send]
        return senders[0] if len(senders) == 1 else ""

    async def health(self) -> dict[str, Any]:
        """What /healthz reports: Redis reachable, worker consuming, gateways configured."""
        redis_ok = True
        try:
            await self.store.redis.ping()
        except Exception:
            redis_ok = False
        worker_ok = self.worker.healthy if self.worker else None
        return {
            "status": "ok" if redis_ok and worker_ok is not False else "degraded",
            "redis": "ok" if redis_ok else "unreachable",
            "worker": {True: "ok", False: "waiting for redis", None: "off"}[worker_ok],
            "flows": sorted(self.flows.flows),
            "gateways": {n: type(g).__name__ for n, g in self.gateways.items()},
        }
