"""The Overview: the engine live (turns/s, reply latency, lanes, gate decisions, connectors,
workers), drawn by console.js from ``/console/api/overview`` polled every 2 s."""

from __future__ import annotations

from aiohttp import web

from engine.console.render import render


async def page(request: web.Request) -> web.Response:
    """The page's frame; the figures arrive from :func:`data`."""
    return await render(request, "overview.html", page="overview")
