"""docs/api.md's "Lists, search and segments", run as written: each ``sh`` block by bash with
``curl`` and ``jq`` against a running engine, in order; what each must show is checked here."""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path

import orjson
import pytest

from engine.app.runtime import Runtime
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import API_KEY, make_config
from tests.test_walkthrough import bash, doc_blocks

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("jq") is None, reason="the examples need curl and jq"
)


def blocks() -> list[str]:
    return doc_blocks("Lists, search and segments")


async def test_the_lists_examples_run_as_written(
    redis_url: str, carrier: SimulatedCarrier, tmp_path: Path
) -> None:
    sh = blocks()
    assert len(sh) == 5
    cfg = make_config(
        redis_url, gateways={"provider": {"type": "http", "url": carrier.url, "sender": "12345"}}
    )
    async with Runtime(cfg) as rt:
        env = {**os.environ, "PARLEY": f"http://127.0.0.1:{rt.http_port}", "KEY": API_KEY}

        assert orjson.loads(await bash(sh[0], env, tmp_path)) == ["Ann", None]

        numbers = (await bash(sh[1], env, tmp_path)).split()
        assert numbers == ["+447700900134", "+447700900135", "+447700900136"]

        rows = list(csv.DictReader(io.StringIO(await bash(sh[2], env, tmp_path))))
        assert [(r["number"], r["tags"], r["consent"]) for r in rows] == [
            ("+447700900134", "vip", "unknown"),
            ("+447700900136", "vip", "unknown"),
        ]
        assert orjson.loads(rows[0]["fields"]) == {"first_name": "Ann", "city": "Leeds", "orders": 4}

        leeds, started = (await bash(sh[3], env, tmp_path)).splitlines()
        assert orjson.loads(leeds) == ["Ann", "Raj"]
        assert orjson.loads(started) == {"requested": 2, "queued": 2}
        await carrier.next_message("+447700900134")

        flows, starts, messages = (await bash(sh[4], env, tmp_path)).splitlines()
        assert orjson.loads(flows) == [{"name": "nps", "status": "valid", "file": "unchanged"}]
        assert orjson.loads(starts) == [{"flow": "nps", "requested": 2, "status": "queued"}]
        assert orjson.loads(messages) == ["out"]
