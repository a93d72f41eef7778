"""Operational routes: health for probes, metrics for Prometheus."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from engine.api.common import json_response, runtime


async def healthz(request: web.Request) -> web.Response:
    """200 when Redis answers and the worker consumes; 503 (with the same body) otherwise."""
    report = await runtime(request).health()
    return json_response(report, 200 if report["status"] == "ok" else 503)


async def metrics(request: web.Request) -> web.Response:
    body = runtime(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
