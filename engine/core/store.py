"""Redis connections and the Lua scripts, owned by one object.

The pool is a :class:`~redis.asyncio.BlockingConnectionPool`: when every connection is busy a
caller waits (up to ``redis.pool_timeout``) instead of failing with ``MaxConnectionsError``, which
the plain pool raises under load. Scripts are registered once and called by SHA (redis-py
reloads them if Redis restarted and lost its script cache).

With ``redis.cluster`` the client is a :class:`~redis.asyncio.cluster.RedisCluster`
(:func:`connect_cluster`): it follows MOVED and ASK, and on a node failure refreshes the
topology and retries, so a failover (a replica promoted) costs the commands in flight a
retry, not an error. Every script touches one slot (engine/core/keys.py). A promoted replica
or a new node has no scripts (Redis does not replicate SCRIPT LOAD): its NOSCRIPT loads them
on every primary and the request runs again (redis-py for a lone call, the coalescer for a
pipeline). ``store.redis`` is typed as the single-node client; where the two differ (stream
reads across slots, scans, pub/sub) the code asks :attr:`Store.cluster`.

With ``redis.sentinels`` the client is a Sentinel-managed one (:func:`_sentinel_client`): each
new connection asks the sentinels for the current primary, and a connection that finds its
server demoted (READONLY) is dropped, so a failover is followed with no operator action; the
pool still blocks when full. With ``redis.wait_replicas`` intake's writes go through
:attr:`Store.durable`, a coalescer that ends each pipeline with WAIT (batching.py); on a
Redis Cluster client, one that sends WAIT to the master of each write's slot (durable.py).
"""

from __future__ import annotations

from importlib import resources
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript

from engine.core import redis_wire
from engine.core.batching import Coalescer
from engine.core.config import RedisConfig
from engine.core.durable import ClusterDurable
from engine.core.errors import NotReplicated, RedisUnavailable

#: Cluster: each node's connections. Not a blocking pool (redis-py's cluster client has none):
#: a blocking stream read holds one connection per slot it reads (engine/core/consumer.py), so
#: on top of ``redis.max_connections`` room is kept for those (connections open only on use).
CLUSTER_READ_CONNECTIONS = 1024
#: Cluster: a failover takes ``cluster-node-timeout`` plus an election (1-2 s on a LAN with the
#: timeout at 1 s; 15 s with Redis's default); commands are retried with back-off (50 ms to 1 s)
#: this many times, refreshing the topology in between, before they fail.
CLUSTER_RETRIES = 20
#: Cluster: seconds before a silent node is taken for dead (longer than any blocking read).
CLUSTER_SOCKET_TIMEOUT = 5.0

SCRIPTS = (
    "intake",
    "commit",
    "timers",
    "lease",
    "contact",
    "erase",
    "webhook_replay",
    "fx_page",
    "reindex",
    "inbox_claim",
    "campaigns",
    "send",
    "cancel",
)
#: Lua pasted into a script in place of its line ``--#include NAME`` (shared functions).
LIBRARIES = ("contact_index",)


def script_source(name: str) -> str:
    """The source of engine script ``name``, its ``--#include`` lines replaced by the libraries."""
    scripts = resources.files("engine.core.scripts")
    source = scripts.joinpath(f"{name}.lua").read_text()
    for lib in LIBRARIES:
        source = source.replace(f"--#include {lib}\n", scripts.joinpath(f"{lib}.lua").read_text())
    return source


class Store:
    """The Redis client plus its registered scripts (``store.commit(keys, args)``)."""

    def __init__(self, client: aioredis.Redis, cfg: RedisConfig | None = None) -> None:
        cfg = cfg or RedisConfig()
        self.redis = client
        #: The client is a RedisCluster (see the module docstring).
        self.cluster = isinstance(client, RedisCluster)
        #: Turns' loads and commits, coalesced into one pipeline per event-loop pass.
        self.coalescer = Coalescer(client, on_noscript=self.load_scripts)
        #: ``redis.wait_replicas`` and ``redis.wait_timeout`` in ms, as WAIT takes them.
        self.wait = (cfg.wait_replicas, max(1, round(cfg.wait_timeout * 1000)))
        #: What acknowledges a peer (intake): its pipelines end with WAIT when
        #: ``redis.wait_replicas`` > 0 (else it is the turns' coalescer: no extra command).
        self.durable: Coalescer | ClusterDurable = self.coalescer
        maybe_cluster: Any = client  # typed as one Redis until the Cluster store lands
        if cfg.wait_replicas and isinstance(maybe_cluster, RedisCluster):
            # A cluster client would send a keyless WAIT to every master on connections that
            # wrote nothing: WAIT must follow the writes to the master of their slot.
            self.durable = ClusterDurable(maybe_cluster, self.wait, on_noscript=self.load_scripts)
        elif cfg.wait_replicas:
            # At most a quarter of the pool waits on replicas; the rest stays for the turns.
            most = max(1, cfg.max_connections // 4)
            self.durable = Coalescer(client, on_noscript=self.load_scripts, wait=self.wait, max_flushes=most)
        #: Closed with the store (the sentinels' own clients).
        self._also_close: list[Sentinel] = []
        #: What a failed ping names when the primary comes from Sentinel.
        self._sentinel_desc = ""
        self._scripts: dict[str, AsyncScript] = {}
        for name in SCRIPTS:
            self._scripts[name] = client.register_script(script_source(name))

    @classmethod
    def connect(cls, url: str, cfg: RedisConfig) -> Store:
        if cfg.cluster:
            return cls(connect_cluster(url, cfg), cfg)
        if cfg.sentinels:
            return cls._via_sentinel(url, cfg)
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=cfg.max_connections,
            timeout=cfg.pool_timeout,
            socket_connect_timeout=5,
            health_check_interval=30,
            retry_on_timeout=True,
        )
        pool.connection_class = redis_wire.lean(pool.connection_class)  # same bytes, less Python
        return cls(aioredis.Redis(connection_pool=pool), cfg)

    @classmethod
    def _via_sentinel(cls, url: str, cfg: RedisConfig) -> Store:
        client, sentinel = _sentinel_client(url, cfg)
        store = cls(client, cfg)  # a Store on the primary the sentinels name now
        store._also_close.append(sentinel)
        where = ", ".join(cfg.sentinels)
        store._sentinel_desc = f"primary {cfg.sentinel_master!r} from the sentinels {where}"
        return store

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except MasterNotFoundError as exc:
            raise RedisUnavailable(
                f"no {self._sentinel_desc}: none answered or none knows it as a master "
                "(check redis.sentinels and redis.sentinel_master)"
            ) from exc
        except (OSError, aioredis.RedisError) as exc:
            raise RedisUnavailable(f"cannot reach Redis: {exc}") from exc

    async def close(self) -> None:
        if self.cluster:
            await self.redis.aclose()
        else:
            # The pool was passed in explicitly, so the client does not close it unless told to.
            await self.redis.aclose(close_connection_pool=True)
        if isinstance(self.durable, ClusterDurable):
            await self.durable.aclose()
        for sentinel in self._also_close:
            for client in sentinel.sentinels:
                await client.aclose()

    def queue_wait(self, pipe: Pipeline) -> bool:
        """End ``pipe`` with WAIT when ``redis.wait_replicas`` > 0 (False: nothing queued). For
        writes that acknowledge a peer outside :attr:`durable` (flow starts); the pipeline's last
        reply then goes to :meth:`check_wait`."""
        if not self.wait[0] or self.cluster:  # a cluster's writes wait per slot (durable.py)
            return False
        pipe.execute_command("WAIT", *self.wait)
        return True

    def check_wait(self, acked: Any) -> None:
        """Raise :class:`NotReplicated` unless WAIT's reply says enough replicas have the writes."""
        if int(acked) < self.wait[0]:
            raise NotReplicated(int(acked), self.wait[0])

    async def run(self, name: str, keys: list[str], args: list[Any], client: Pipeline | None = None) -> Any:
        """Run a script. Alone, redis-py loads it if Redis lost its script cache. Queued on a
        pipeline it is a bare EVALSHA (no SCRIPT EXISTS round trip before every pipeline): the
        pipeline's owner handles NOSCRIPT (the coalescer loads the scripts and runs the
        requests again, which is safe because a NOSCRIPT reply means nothing ran)."""
        script = self._scripts[name]
        if client is None:
            return await script(keys=keys, args=args)
        return client.evalsha(script.sha, len(keys), *keys, *args)

    def register(self, name: str, source: str) -> None:
        """Add a script owned by another part (a connector's, gateways/scripts/), run by name
        like the engine's own. Registering a name again changes nothing."""
        if name not in self._scripts:
            self._scripts[name] = self.redis.register_script(source)

    async def load_scripts(self) -> None:
        """Load every script into Redis (after a restart emptied its script cache)."""
        for script in self._scripts.values():
            script.sha = await self.redis.script_load(script.script)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel pool (connections to whichever server the sentinels call primary now) that
    makes callers wait for a free connection, as the plain store's pool does."""


def _sentinel_client(url: str, cfg: RedisConfig) -> tuple[aioredis.Redis, Sentinel]:
    """A client of the primary the sentinels name ``redis.sentinel_master``. ``url`` gives the
    database, credentials and TLS of the data nodes; its host is not used."""
    opts: dict[str, Any] = dict(parse_url(url))
    for unused in ("host", "port", "path"):
        opts.pop(unused, None)
    if opts.pop("connection_class", None) is SSLConnection:
        opts["ssl"] = True  # the pool picks its Sentinel-managed TLS connection
    sentinel = Sentinel(
        [(host, int(port)) for host, _, port in (a.rpartition(":") for a in cfg.sentinels)],
        sentinel_kwargs={
            "password": cfg.sentinel_password or None,
            "socket_connect_timeout": 2,
            "socket_timeout": 2,
        },
    )
    client: aioredis.Redis = sentinel.master_for(
        cfg.sentinel_master,
        connection_pool_class=_BlockingSentinelPool,
        max_connections=cfg.max_connections,
        timeout=cfg.pool_timeout,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry_on_timeout=True,
        **opts,
    )
    return client, sentinel


def connect_cluster(url: str, cfg: RedisConfig) -> aioredis.Redis:
    """A Redis Cluster client, discovered from ``url``'s node and ``cfg.nodes``.

    Typed as the single-node client it stands in for: the commands Parley uses have the same
    signatures on both (see the module docstring for where they differ)."""
    seeds = [ClusterNode(host, int(port)) for host, _, port in (n.rpartition(":") for n in cfg.nodes)]
    client = RedisCluster.from_url(
        url,
        startup_nodes=seeds or None,
        max_connections=cfg.max_connections + CLUSTER_READ_CONNECTIONS,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), CLUSTER_RETRIES),
        socket_connect_timeout=2,
        socket_timeout=CLUSTER_SOCKET_TIMEOUT,
        health_check_interval=30,
    )
    return cast(aioredis.Redis, client)
