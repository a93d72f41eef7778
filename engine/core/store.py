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
"""

from __future__ import annotations

from importlib import resources
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript

from engine.core.batching import Coalescer
from engine.core.config import RedisConfig
from engine.core.errors import RedisUnavailable

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
)


class Store:
    """The Redis client plus its registered scripts (``store.commit(keys, args)``)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client
        #: The client is a RedisCluster (see the module docstring).
        self.cluster = isinstance(client, RedisCluster)
        #: Turns' loads and commits, coalesced into one pipeline per event-loop pass.
        self.coalescer = Coalescer(client, on_noscript=self.load_scripts)
        self._scripts: dict[str, AsyncScript] = {}
        for name in SCRIPTS:
            source = resources.files("engine.core.scripts").joinpath(f"{name}.lua").read_text()
            self._scripts[name] = client.register_script(source)

    @classmethod
    def connect(cls, url: str, cfg: RedisConfig) -> Store:
        if cfg.cluster:
            return cls(connect_cluster(url, cfg))
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=cfg.max_connections,
            timeout=cfg.pool_timeout,
            socket_connect_timeout=5,
            health_check_interval=30,
            retry_on_timeout=True,
        )
        return cls(aioredis.Redis(connection_pool=pool))

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except (OSError, aioredis.RedisError) as exc:
            raise RedisUnavailable(f"cannot reach Redis: {exc}") from exc

    async def close(self) -> None:
        if self.cluster:
            await self.redis.aclose()
            return
        # The pool was passed in explicitly, so the client does not close it unless told to.
        await self.redis.aclose(close_connection_pool=True)

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
