"""Steady-state Redis bytes per message of the per-message bookkeeping (issue 15, item 6).

Each message leaves an entry for as long as its window: an outbound one its provider id (for
its delivery receipt, ``receipt_window``), an inbound one its dedupe mark (``dedupe_window``).
The cost per entry depends on how full the bucket hashes are (engine/core/idmaps.py), and a bucket is
as full as the planned rate makes it. So this drives the real code paths (``record_sent``, the
sender's status script; ``accept_inbound``, the intake script) with a fake clock that moves at
the planned rate, from the start of a bucket, for ``messages`` messages: exactly how a steady
stream fills the buckets, without waiting hours. Then it reads what the maps take:

- ``MEMORY USAGE`` of every bookkeeping hash, divided by the entries;
- ``INFO memory`` ``used_memory`` before and after (the inbound streams the texts were appended
  to are deleted first), divided likewise: this counts the key space and expiry entries too.

The same messages written the way earlier releases did (one string key each, ``SET ... EX``)
give the figure before. Run alone: ``python loadtests/bookkeeping.py [--messages 20000]``;
``make bench`` runs it and reports ``bytes_per_message_steady``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.app.runtime import Runtime  # noqa: E402
from engine.app.settings import load_config  # noqa: E402
from engine.conversation.intake import accept_inbound  # noqa: E402
from engine.core import keys  # noqa: E402
from engine.core.clock import FakeClock  # noqa: E402
from gateways.receipts import record_sent  # noqa: E402

#: One full bucket of an 8 h window (1 h buckets) at this rate is about 20,000 messages.
WINDOW = "8h"


def _ids(i: int) -> tuple[str, str, str]:
    """A realistic (number, outbound provider id, inbound provider id) for message ``i``: an
    SMSC's 10-hex-digit id, a Twilio-like 34-character SID."""
    h = hashlib.blake2b(str(i).encode(), digest_size=20).hexdigest()
    return f"+4477{i:08d}", h[:10], "SM" + h[:32]


async def _used(r: aioredis.Redis) -> int:
    return int((await r.info("memory"))["used_memory"])


async def _maps(r: aioredis.Redis, pattern: str) -> tuple[int, int, int, set[str]]:
    """(MEMORY USAGE total, entries, hashes, encodings) of the bookkeeping hashes matching ``pattern``."""
    total = entries = hashes = 0
    encodings: set[str] = set()
    async for key in r.scan_iter(match=pattern, count=1000, _type="HASH"):
        hashes += 1
        total += int(await r.memory_usage(key, samples=0) or 0)
        entries += int(await r.hlen(key))
        encodings.add((await r.object("encoding", key)).decode())
    return total, entries, hashes, encodings


async def measure(redis_url: str, messages: int = 20_000, rate: float = 0.0) -> dict[str, Any]:
    """Bytes per message of the bookkeeping at a steady ``rate`` (messages per second each way;
    0: the rate that makes ``messages`` one full 1 h bucket). ``redis_url`` must name an empty
    database: it is flushed before and after."""
    rate = rate or messages / 3600
    cfg = load_config(
        env={},
        overrides={
            "redis": {"url": redis_url},
            "engine": {
                "flows_dir": str(ROOT / "rules"), "shards": 8, "dedupe_window": WINDOW, "inbound_rate": rate,
            },
            "gateways": {
                "carrier": {"type": "http", "url": "http://127.0.0.1:9/send", "sender": "1234", "rate": rate,
                            "receipt_window": WINDOW}
            },
        },
    )  # fmt: skip
    clock = FakeClock(1_767_225_600_000)  # 2026-01-01T00:00Z: the start of a bucket
    r = aioredis.Redis.from_url(redis_url)
    try:
        await r.flushdb()
        async with Runtime(cfg, clock=clock, http=False, worker=False, senders=False) as rt:
            before = await _used(r)
            for i in range(messages):
                number, out_id, in_id = _ids(i)
                await accept_inbound(
                    rt, gateway="carrier", contact=number, to="1234", text="9", provider_id=in_id
                )
                await record_sent(rt, "carrier", f"out-{i % 8}-{clock.now_ms()}-0-0", number, out_id)
                clock.advance(1 / rate)
            for shard in range(8):
                await r.delete(keys.inbound_stream(shard))
            await asyncio.sleep(0.1)
            used = await _used(r) - before
            out_bytes, out_n, out_hashes, out_enc = await _maps(r, "p:pid:*")
            in_bytes, in_n, in_hashes, in_enc = await _maps(r, "p:dd:*")
        await r.flushdb()
        legacy_out, legacy_in, legacy_used = await _legacy(r, messages, rate)
        await r.flushdb()
    finally:
        await r.aclose()
    assert out_n == messages and in_n == messages, (out_n, in_n)
    return {
        "bytes_per_message_steady": round((out_bytes + in_bytes) / (2 * messages), 1),
        "bookkeeping": {
            "messages": messages,
            "rate_per_s": round(rate, 2),
            "outbound_bytes_per_message": round(out_bytes / messages, 1),
            "inbound_bytes_per_message": round(in_bytes / messages, 1),
            "used_memory_bytes_per_message": round(used / (2 * messages), 1),
            "entries_per_hash": round((out_n + in_n) / max(1, out_hashes + in_hashes), 1),
            "encodings": sorted(out_enc | in_enc),
            "legacy_outbound_bytes_per_message": round(legacy_out / messages, 1),
            "legacy_inbound_bytes_per_message": round(legacy_in / messages, 1),
            "legacy_used_memory_bytes_per_message": round(legacy_used / (2 * messages), 1),
            "method": "real intake and status scripts at a steady rate (fake clock) into one full bucket; "
            "MEMORY USAGE of the bookkeeping hashes / entries (used_memory delta alongside)",
        },
    }


async def _legacy(r: aioredis.Redis, messages: int, rate: float) -> tuple[int, int, int]:
    """The same messages as earlier releases kept them: one string key each, with its TTL."""
    before = await _used(r)
    async with r.pipeline(transaction=False) as pipe:
        for i in range(messages):
            number, out_id, in_id = _ids(i)
            ms = 1_767_225_600_000 + int(i * 1000 / rate)
            pipe.set(f"p:pid:carrier:{out_id}", f"{number} out-{i % 8}-{ms}-0-0", ex=7 * 86400)
            pipe.set(f"p:dd:{{{number}}}:carrier:{in_id}", f"{in_id[:16]} {ms}-0", ex=86400)
        await pipe.execute()
    used = await _used(r) - before
    out = inn = 0
    async for key in r.scan_iter(match="p:*", count=1000):
        size = int(await r.memory_usage(key, samples=0) or 0)
        if key.startswith(b"p:pid:"):
            out += size
        else:
            inn += size
    return out, inn, used


def main() -> None:
    import orjson

    from engine.core.redis_embedded import EmbeddedRedis

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=0.0)
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="parley-bookkeeping-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis", persistent=False)
        server.start()
        try:
            result = asyncio.run(measure(server.url, args.messages, args.rate))
        finally:
            server.stop()
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
