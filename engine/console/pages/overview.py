"""The Overview: the engine live (turns/s, turn latency and reply-lane wait p50/p99, inbound
and outbound lanes, gate decisions, connectors, workers). The page is a frame; console.js's
``overview.js`` polls :func:`data` every 2 s and draws the figures and sparklines (inline SVG)."""

from __future__ import annotations

from aiohttp import web

from engine.console import live
from engine.console.render import render
from engine.console.web import services, state


async def page(request: web.Request) -> web.Response:
    """The page's frame, filled at once with a first reading (then live)."""
    first = await live.overview(services(request), state(request).sampler)
    return await render(request, "overview.html", page="overview", o=first)


async def data(request: web.Request) -> web.Response:
    """``/console/api/overview``: the figures (engine/console/live.py says how they are read)."""
    return web.json_response(await live.overview(services(request), state(request).sampler))
