"""Operational routes: health for probes, metrics for Prometheus."""

from __future__ import annotations

import contextlib

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from engine.api.common import json_response, runtime
from engine.api.schema import Answer, Operation, operation

OBJECT = {"type": "object"}


@operation(Operation(
    "get_health", "operations", "Health: Redis, workers, shards, gateways",
    {200: Answer("healthy", OBJECT), 503: Answer("degraded (the body says which part)", OBJECT)}, public=True,
))  # fmt: skip
async def healthz(request: web.Request) -> web.Response:
    """200 when Redis answers and the worker consumes; 503 (with the same body) otherwise."""
    report = await runtime(request).health()
    return json_response(report, 200 if report["status"] == "ok" else 503)


@operation(Operation(
    "get_metrics", "operations", "Prometheus metrics",
    {200: Answer("text exposition format", {"type": "string"}, "text/plain")}, public=True,
))  # fmt: skip
async def metrics(request: web.Request) -> web.Response:
    rt = runtime(request)
    with contextlib.suppress(RedisError, OSError):  # Redis down: the stream gauges keep their last value
        await rt.refresh_stream_metrics()
    body = rt.metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
