"""docs/api.md's "Sending one message" run as written: each ``sh`` block by bash with ``curl``
and ``jq`` against a running engine, in order (as tests/test_walkthrough.py runs the CRM
walkthrough); what each step must show is checked here."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import aiohttp
import orjson
import pytest

from engine.app.runtime import Runtime
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import API_KEY, eventually, make_config
from tests.test_walkthrough import bash, doc_blocks

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("jq") is None, reason="the examples need curl and jq"
)


def blocks() -> list[str]:
    return doc_blocks("Sending one message")


async def test_the_single_message_examples_run_as_written(
    redis_url: str, carrier: SimulatedCarrier, tmp_path: Path
) -> None:
    sh = blocks()
    assert len(sh) == 5
    cfg = make_config(
        redis_url, gateways={"provider": {"type": "http", "url": carrier.url, "sender": "12345"}}
    )
    async with Runtime(cfg) as rt:
        base = f"http://127.0.0.1:{rt.http_port}"
        env = {**os.environ, "PARLEY": base, "KEY": API_KEY}
        async with aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {API_KEY}"}) as api:
            for n, name in (("+447700900123", "Ann"), ("+447700900456", "Raj")):
                async with api.put(f"/v1/contacts/{n}", json={"fields": {"first_name": name}}) as r:
                    assert r.status in (200, 201), await r.text()

        sent = orjson.loads(await bash(sh[0], env, tmp_path))
        assert sent["status"] == "queued" and sent["id"].startswith("msg-")
        assert (await carrier.next_message("+447700900123")).text == "Your order A-1042 has shipped"
        again = orjson.loads(await bash(sh[0], env, tmp_path))  # the same key: the same message
        assert again["id"] == sent["id"] and again["repeat"] is True

        scheduled = orjson.loads(await bash(sh[1], env, tmp_path))
        assert scheduled["status"] == "scheduled"
        assert scheduled["send_at"] == "2030-06-03T16:00:00.000Z"  # 17:00 in London is BST

        cancelled = orjson.loads(await bash(sh[2], env, tmp_path))
        assert cancelled["status"] == "cancelled" and cancelled["already"] is False

        rows = [json.loads(line) for line in (await bash(sh[3], env, tmp_path)).splitlines()]
        assert [r["row"] for r in rows] == [1, 2, 3]
        assert rows[1]["error"]["field"] == "to" and rows[0]["status"] == rows[2]["status"] == "queued"

        async def raj_greeted() -> bool:
            return any(m.to == "+447700900456" and m.text == "Hi Raj" for m in carrier.received)

        await eventually(raj_greeted, attempts=2000)

        stopped = orjson.loads(await bash(sh[4], env, tmp_path))
        assert stopped["cancelled"] == 2 and stopped["scheduled"] == 2 and stopped["too_late"] == 0
