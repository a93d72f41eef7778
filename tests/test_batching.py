"""Coalesced pipelines: concurrent requests share one pipeline, yet each sees only its own
replies and its own errors."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from engine.core.batching import Coalescer


async def test_requests_in_one_pass_share_a_pipeline_and_keep_their_own_errors(redis_url: str) -> None:
    r = aioredis.Redis.from_url(redis_url)
    try:
        await r.set("s", "x")
        await r.hset("h", "f", "1")
        c = Coalescer(r)
        flushes = 0
        real = c._flush

        async def counting(batch):  # type: ignore[no-untyped-def]
            nonlocal flushes
            flushes += 1
            await real(batch)

        c._flush = counting  # type: ignore[method-assign]

        async def good(pipe: Pipeline) -> None:
            pipe.get("s")
            pipe.hget("h", "f")

        async def bad(pipe: Pipeline) -> None:
            pipe.incr("n")
            pipe.hgetall("s")  # WRONGTYPE: s is a string

        results = await asyncio.gather(c.run(good), c.run(bad), c.run(good), return_exceptions=True)
        assert results[0] == [b"x", b"1"] and results[2] == [b"x", b"1"]
        assert isinstance(results[1], ResponseError) and "WRONGTYPE" in str(results[1])
        assert flushes == 1
        assert await r.get("n") == b"1"  # the rest of the failed request's commands still ran

        # No Redis at all: every request of the pipeline gets the connection error.
        down = Coalescer(aioredis.Redis(port=1, retry=None))
        outcomes = await asyncio.gather(down.run(good), down.run(good), return_exceptions=True)
        assert all(isinstance(o, aioredis.ConnectionError) for o in outcomes), outcomes
    finally:
        await r.aclose()
