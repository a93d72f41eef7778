"""What the contacts' listing index costs (engine/crm/index.py): Redis bytes per contact, and the
time of a list request, an export and a segment's selection at N contacts.

A private redis-server, N contacts written as the API writes them (contact.lua, so the index is
kept as in production), 10% opted in through the consent path (reindex.lua); then an in-process
engine answers ``GET /v1/contacts`` over real HTTP on loopback. Prints one JSON object.

    .venv/bin/python loadtests/bench_listing.py --contacts 100000

Bytes: ``MEMORY USAGE ... SAMPLES 0`` (exact) of every shard's index, divided by N; and of a
sample of contact hashes for comparison. Times: the median and p90 of ``--requests`` requests
of each kind, client to client (aiohttp), on a machine the harness shares.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.app.runtime import Runtime  # noqa: E402
from engine.app.settings import load_config  # noqa: E402
from engine.core import contacts, keys  # noqa: E402
from engine.core.redis_embedded import EmbeddedRedis  # noqa: E402
from engine.crm import index  # noqa: E402

KEY = "bench-listing-key-0123456789"
CITIES = ("Leeds", "York", "Hull", "Bath", "Ely")
LEEDS = '[{"field": "contact.city", "equals": "Leeds"}]'
ORDERS_42 = '[{"field": "contact.orders", "equals": 42}]'


def number(i: int) -> str:
    return f"+4477{i:08d}"


async def fill(rt: Runtime, n: int, seed: int) -> None:
    rng = random.Random(seed)
    shards = rt.config.engine.shards
    now = 1_767_225_600_000
    batch: list[contacts.Contact] = []
    for i in range(n):
        tags = [t for t, p in (("vip", 0.1), ("news", 0.3)) if rng.random() < p]
        fields = {"first_name": f"N{i}", "city": CITIES[i % 5], "orders": rng.randrange(100), "id": i}
        batch.append(contacts.Contact(number(i), fields, tags=tags))
        if len(batch) == 2000:
            await contacts.upsert_many(rt.store, shards, batch, now + i)
            batch.clear()
    if batch:
        await contacts.upsert_many(rt.store, shards, batch, now + n)
    for i in range(0, n, 10):  # 10% opted in, through the consent path
        s = keys.shard_of(number(i), shards)
        async with rt.store.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.governance(number(i), s), mapping={"cs": "opted_in", "src": "web", "at": now})
            await index.execute_with_reindex(rt.store, pipe, number(i), s)


async def memory(rt: Runtime, n: int) -> dict[str, float]:
    r = rt.store.redis
    shards = rt.config.engine.shards
    ix = sum([int(await r.memory_usage(keys.contact_index(s), samples=0) or 0) for s in range(shards)])
    members = sum([int(await r.zcard(keys.contact_index(s))) for s in range(shards)])
    sample = random.Random(1).sample(range(n), min(n, 1000))
    profile = [
        int(await r.memory_usage(keys.contact(number(i), keys.shard_of(number(i), shards)), samples=0) or 0)
        for i in sample
    ]
    return {
        "index_bytes_per_contact": round(ix / n, 1),
        "index_members_per_contact": round(members / n, 2),
        "index_bytes_per_member": round(ix / members, 1),
        "profile_bytes_per_contact": round(statistics.mean(profile), 1),
    }


async def timed(api: aiohttp.ClientSession, params: dict[str, str], requests: int) -> dict[str, Any]:
    ms: list[float] = []
    got = 0
    for _ in range(requests):
        t = time.perf_counter()
        async with api.get("/v1/contacts", params=params) as r:
            body = await r.json()
            assert r.status == 200, body
        ms.append((time.perf_counter() - t) * 1000)
        got = len(body["contacts"])
    ms.sort()
    return {"median_ms": round(statistics.median(ms), 2), "p90_ms": round(ms[int(len(ms) * 0.9) - 1], 2),
            "contacts": got}  # fmt: skip


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="parley-bench-listing-") as tmp:
        server = EmbeddedRedis(tmp, persistent=False)
        server.start()
        try:
            cfg = load_config(env={}, overrides={
                "redis": {"url": server.url}, "http": {"port": 0}, "api": {"keys": [KEY]},
                "engine": {"flows_dir": str(ROOT / "rules"), "shards": args.shards},
            })  # fmt: skip
            async with Runtime(cfg, worker=False, senders=False) as rt:
                t = time.perf_counter()
                await fill(rt, args.contacts, 7)
                fill_s = time.perf_counter() - t
                out: dict[str, Any] = {"contacts": args.contacts, "shards": args.shards}
                out |= {"fill_s": round(fill_s, 1), **await memory(rt, args.contacts)}
                base = f"http://127.0.0.1:{rt.http_port}"
                async with aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {KEY}"}) as api:
                    async with api.get("/v1/contacts", params={"limit": "500"}) as r:
                        deep = (await r.json())["next_cursor"]
                    kinds = {
                        "first_page_50": {"limit": "50"},
                        "page_of_500": {"limit": "500"},
                        "next_page_50": {"limit": "50", "cursor": deep},
                        "tag_vip_10pct": {"limit": "50", "tags": "vip"},
                        "consent_opted_in_10pct": {"limit": "50", "consent": "opted_in"},
                        "where_city_20pct": {"limit": "50", "where": LEEDS},
                        "where_1_in_100": {"limit": "50", "where": ORDERS_42},
                        "updated_since_recent": {"limit": "50", "updated_since": "2026-01-01T00:00:01Z"},
                    }
                    out["list"] = {k: await timed(api, p, args.requests) for k, p in kinds.items()}
                    t = time.perf_counter()
                    rows = 0
                    async with api.get("/v1/contacts:export", params={"format": "jsonl"}) as r:
                        async for _line in r.content:
                            rows += 1
                    export_s = time.perf_counter() - t
                    out["export"] = {"rows": rows, "seconds": round(export_s, 2),
                                     "contacts_per_s": round(rows / export_s)}  # fmt: skip
            return out
        finally:
            server.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contacts", type=int, default=100_000)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--requests", type=int, default=30)
    print(json.dumps(asyncio.run(main(p.parse_args())), indent=2))
