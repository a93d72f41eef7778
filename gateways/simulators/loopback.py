"""What every simulated HTTP provider shares: an aiohttp app on 127.0.0.1 (a free port) and a
client session for calling Parley back (receipts, inbound texts). A simulator says its routes."""

from __future__ import annotations

from typing import Self

import aiohttp
from aiohttp import web


class LoopbackServer:
    """``async with Stub() as stub:`` serves :meth:`routes` on ``stub.port`` until the block ends."""

    def __init__(self) -> None:
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        self._client = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()
