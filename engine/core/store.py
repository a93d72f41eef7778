"""Redis connections and the Lua scripts, owned by one object.

The pool is a :class:`~redis.asyncio.BlockingConnectionPool`: when every connection is busy a
caller waits (up to ``redis.pool_timeout``) instead of failing with ``MaxConnectionsError``, which
the plain pool raises under load. Scripts are registered once and called by SHA (redis-py
reloads them if Redis restarted and lost its script cache).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript

from engine.core.batching import Coalescer
from engine.core.config import RedisConfig
from engine.core.errors import RedisUnavailable

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
        #: Turns' loads and commits, coalesced into one pipeline per event-loop pass.
        self.coalescer = Coalescer(client, on_noscript=self.load_scripts)
        self._scripts: dict[str, AsyncScript] = {}
        for name in SCRIPTS:
            source = resources.files("engine.core.scripts").joinpath(f"{name}.lua").read_text()
            self._scripts[name] = client.register_script(source)

    @classmethod
    def connect(cls, url: str, cfg: RedisConfig) -> Store:
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
