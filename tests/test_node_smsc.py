"""Receipts against an SMSC nobody here wrote: node-smpp (tests/peers/node_smsc/server.js).

It answers hex ids counting from ``a`` (so ``10``, ``11``... come early and often) and sends
each receipt right after its submit_sm_resp, so most receipts race their send's record. Every
message must end with its own receipt: none stays ``sent``, none carries another's status.
The npm install is ``make peers`` (a step of ``make test``).

``PARLEY_NODE_SMSC_MESSAGES`` and ``PARLEY_NODE_SMSC_RATE`` scale the run by hand (the issue's
1,000 messages at 100/s); the suite runs 300 at 150/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.core import keys
from engine.core.clock import FakeClock
from tests.conftest import ROOT, eventually, shard
from tests.test_sender import Engine, engine, start
from tests.test_smpp_gateway import bound

PEER = ROOT / "tests/peers/node_smsc"
MESSAGES = int(os.environ.get("PARLEY_NODE_SMSC_MESSAGES", "300"))
RATE = float(os.environ.get("PARLEY_NODE_SMSC_RATE", "150"))


class NodeSmsc:
    """The running node-smpp SMSC: its port, and its counts on request (server.js)."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc, self.port = proc, port

    async def counts(self) -> dict[str, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"?\n")
        await self.proc.stdin.drain()
        counts: dict[str, int] = orjson.loads(await asyncio.wait_for(self.proc.stdout.readline(), 5))
        return counts


@contextlib.asynccontextmanager
async def node_smsc(*flags: str) -> AsyncIterator[NodeSmsc]:
    """The node-smpp SMSC on a free port (``flags``: more of server.js's); stopped by closing
    its stdin."""
    node = shutil.which("node")
    if node is None or not (PEER / "node_modules/smpp").is_dir():
        pytest.fail("node-smpp is not installed: run `make peers` (npm ci in tests/peers/node_smsc)")
    proc = await asyncio.create_subprocess_exec(
        node, "server.js", "--port", "0", "--id-start", "10", *flags, cwd=PEER,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line, "node-smpp SMSC did not start"
        yield NodeSmsc(proc, int(orjson.loads(line)["port"]))
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def contacts(n: int) -> list[str]:
    return [f"+4477009{i:05d}" for i in range(n)]


def expected(number: str) -> tuple[str, str]:
    """What the node SMSC reports for a message to ``number`` (see server.js)."""
    if int(number[-1]) % 2 == 0:
        return "delivered", ""
    return "failed", f"UNDELIV err:{number[-3:]}"


async def outcomes(e: Engine, numbers: list[str]) -> dict[str, tuple[str, str, str]]:
    """number -> (status, error, provider id) of its one outbound message."""
    out = {}
    async with e.rt.store.redis.pipeline(transaction=False) as pipe:
        for n in numbers:
            pipe.hvals(keys.message_records(n, shard(n)))
        for n, values in zip(numbers, await pipe.execute(), strict=True):
            sent = [m for m in map(orjson.loads, values) if m.get("dir") == "out"]
            m = sent[-1] if sent else {}
            out[n] = (m.get("status", "none"), m.get("error") or "", m.get("provider_id", ""))
    return out


async def test_node_smpp_receipts_right_after_the_response_land_on_their_own_messages(
    redis_url: str, tmp_path: Path
) -> None:
    numbers = contacts(MESSAGES)
    async with node_smsc() as smsc:
        gw = {
            "type": "smpp", "host": "127.0.0.1", "port": smsc.port, "system_id": "parley", "password": "secret",
            "sender": "12345", "rate": RATE, "window": 20, "reconnect_delay": "50ms", "response_timeout": "5s",
        }  # fmt: skip
        async for e in engine(redis_url, tmp_path, {"smsc": gw}):
            await bound(e.rt)
            t0 = time.monotonic()
            for i in range(0, len(numbers), 500):
                await start(e.api, "note", numbers[i : i + 500], text="Hello")
            deadline = t0 + MESSAGES / RATE + 30
            while True:
                got = await outcomes(e, numbers)
                done = all(s not in ("none", "queued", "sent") for s, _, _ in got.values())
                if done or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
    stayed_sent = [n for n, (s, _, _) in got.items() if s == "sent"]
    wrong = [
        n for n, (s, err, _) in got.items() if s not in ("none", "queued", "sent") and (s, err) != expected(n)
    ]
    hex_digit_ids = sum(1 for _, _, pid in got.values() if pid.isdigit())
    print(
        f"node-smpp: {MESSAGES} messages at {RATE:g}/s: {hex_digit_ids} all-digit hex ids, "
        f"{len(stayed_sent)} stayed sent, {len(wrong)} carry another message's status, "
        f"settled in {time.monotonic() - t0:.1f}s"
    )
    assert hex_digit_ids > MESSAGES // 10  # the race was on: many ids read as decimal numbers too
    assert stayed_sent == [] and wrong == []
    assert all(s in ("delivered", "failed") for s, _, _ in got.values())


async def test_node_smpp_answers_query_sm_for_receipts_it_never_sent(redis_url: str, tmp_path: Path) -> None:
    """No receipts at all: the overdue queries give every message its own final status."""
    numbers = contacts(6)
    clock = FakeClock()
    async with node_smsc("--lost-receipts", "1") as smsc:
        gw = {
            "type": "smpp", "host": "127.0.0.1", "port": smsc.port, "system_id": "parley", "password": "secret",
            "sender": "12345", "reconnect_delay": "50ms", "query_after": "10m", "query_interval": "1h",
            "query_rate": 1000,
        }  # fmt: skip
        async for e in engine(redis_url, tmp_path, {"smsc": gw}, clock):
            await bound(e.rt)
            await start(e.api, "note", numbers, text="Hello")

            async def all_sent(e: Engine = e) -> bool:
                return all(s == "sent" for s, _, _ in (await outcomes(e, numbers)).values())

            await eventually(all_sent, attempts=2000)
            clock.advance(11 * 60)
            queries = e.rt.gateways["smsc"].queries  # type: ignore[attr-defined]
            assert await queries.run_once() == len(numbers)
            got = await outcomes(e, numbers)
            assert (await smsc.counts())["queries"] == len(numbers)
    assert {n: s for n, (s, _, _) in got.items()} == {n: expected(n)[0] for n in numbers}
    assert all(err.startswith("query_sm: ") for s, err, _ in got.values() if s == "failed")


async def test_node_smpp_reads_our_validity_period_and_priority_as_we_meant_them(
    redis_url: str, tmp_path: Path
) -> None:
    """node-smpp decodes SMPP times itself: our relative and absolute forms name the instant we meant."""
    for fmt in ("relative", "absolute"):
        async with node_smsc() as smsc:
            gw = {
                "type": "smpp", "host": "127.0.0.1", "port": smsc.port, "system_id": "parley",
                "password": "secret", "sender": "12345", "time_format": fmt,
            }  # fmt: skip
            async for e in engine(redis_url, tmp_path, {"smsc": gw}):
                await bound(e.rt)
                async with e.api.post(
                    "/v1/messages",
                    json={"to": "+447700900122", "text": "hi", "validity": "2h", "priority": 2},
                ) as r:
                    assert r.status == 202
                expected_until = time.time() + 7200

                async def submitted() -> dict[str, Any] | None:
                    counts = await smsc.counts()
                    return counts["last"] if counts["submits"] else None

                last = await eventually(submitted, attempts=2000)
        assert last["priority_flag"] == 2
        until = datetime.fromisoformat(last["validity_period"].replace("Z", "+00:00")).timestamp()
        assert abs(until - expected_until) < 15, (fmt, last)
