"""Operational routes: health for probes, metrics for Prometheus."""

from __future__ import annotations

import contextlib

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from engine.api.common import json_response, runtime


async def healthz(request: web.Request) -> web.Response:
    """200 when Redis answers and the worker consumes; 503 (with the same body) otherwise."""
    report = await runtime(request).health()
    return json_response(report, 200 if report["status"] == "ok" else 503)


async def metrics(request: web.Request) -> web.Response:
    rt = runtime(request)
    with contextlib.suppress(RedisError, OSError):  # Redis down: the stream gauges keep their last value
        await rt.refresh_stream_metrics()
    body = rt.metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
