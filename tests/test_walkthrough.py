"""docs/api.md's "A CRM integration, step by step", run as written: each ``sh`` block by bash with
``curl`` and ``jq`` against a running engine, in order, and the ``yaml`` block as the engine's
webhook configuration (its URL pointed at a stub CRM). What each step must show is checked here."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web

from engine.app.runtime import Runtime
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import API_KEY, ROOT, eventually, make_config, serve

SECTION = re.search(
    r"## A CRM integration, step by step\n(.*?)\n## ", (ROOT / "docs/api.md").read_text(), re.S
)
pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("jq") is None, reason="the walkthrough needs curl and jq"
)


def blocks(kind: str) -> list[str]:
    assert SECTION is not None, "docs/api.md lost its walkthrough"
    return re.findall(rf"```{kind}\n(.*?)```", SECTION.group(1), re.S)


class Crm:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.url = ""

    async def hook(self, request: web.Request) -> web.Response:
        self.events.append(orjson.loads(await request.read()))
        return web.Response(status=204)


@pytest.fixture
async def crm() -> AsyncIterator[Crm]:
    stub = Crm()
    async with serve(("POST", "/hooks/parley", stub.hook)) as base:
        stub.url = f"{base}/hooks/parley"
        yield stub


def doc_blocks(heading: str, kind: str = "sh") -> list[str]:
    """The ``kind`` code blocks of docs/api.md's section ``## heading``, in order (the examples a
    doc test runs as written)."""
    text = (ROOT / "docs/api.md").read_text()
    section = re.search(rf"\n## {re.escape(heading)}\n(.*?)(?:\n## |\Z)", text, re.S)
    assert section is not None, f"docs/api.md lost its section {heading!r}"
    return re.findall(rf"```{kind}\n(.*?)```", section.group(1), re.S)


async def bash(script: str, env: dict[str, str], cwd: Path) -> str:
    state = cwd / "state.sh"
    full = f"set -euo pipefail\n[ -f {state} ] && source {state}\n{script}\nexport -p > {state}\n"
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", full, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, f"{script}\nfailed: {err.decode()}"
    return out.decode()


async def test_the_crm_walkthrough_runs_as_written(
    redis_url: str, carrier: SimulatedCarrier, crm: Crm, tmp_path: Path
) -> None:
    sh = blocks("sh")
    (config_block,) = blocks("yaml")
    assert len(sh) == 5
    hooks = yaml.safe_load(config_block)["crm"]
    hooks["webhooks"][0]["url"] = crm.url
    cfg = make_config(
        redis_url, crm=hooks, gateways={"provider": {"type": "http", "url": carrier.url, "sender": "12345"}}
    )
    async with Runtime(cfg) as rt:
        env = {**os.environ, "PARLEY": f"http://127.0.0.1:{rt.http_port}", "KEY": API_KEY}

        imported = orjson.loads(await bash(sh[0], env, tmp_path))
        assert (imported["rows"], imported["created"], imported["failed"]) == (4, 4, 0)

        started = orjson.loads(await bash(sh[1], env, tmp_path))
        assert started["requested"] == 3 and started["skipped_at_request"] == {"holdout": 1}
        for n in ("+447700900123", "+447700900456"):  # Leeds, not held out; Li is the holdout
            assert (await carrier.next_message(n)).text.startswith("Hi ")
        assert "+447700900321" not in {m.to for m in carrier.received}
        assert "+447700900789" not in {m.to for m in carrier.received}  # York

        assert orjson.loads(await bash(sh[2], env, tmp_path))["status"] == "accepted"
        assert (await carrier.next_message("+447700900123")).text.startswith("Wonderful")

        conversion = orjson.loads(await bash(sh[3], env, tmp_path))
        assert conversion["attributed"]["arm"] == "treated"

        out = await bash(sh[4], env, tmp_path)
        report, end = json.JSONDecoder().raw_decode(out)  # the report, then the CSV right after it
        results_text = out[end:]
        assert report["runs"]["started"] == 2 and report["response_rate"] == 0.5
        assert report["nps"]["nps_score"]["promoters"] == 1
        arms = report["experiments"]["nps"]["arms"]
        assert arms["holdout"]["assigned"] == 1 and arms["treated"]["converted"] == 1
        rows = list(csv.DictReader(io.StringIO(results_text)))
        assert sorted(r["contact"] for r in rows) == ["+447700900123", "+447700900456"]

        async def pushed() -> bool:
            types = [e["type"] for e in crm.events if e["contact"] == "+447700900123"]
            return types == ["started", "replied", "result", "conversion"]

        await eventually(pushed, attempts=2000)
