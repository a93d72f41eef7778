"""docs/api.md's "Campaigns" section, run as written: each ``sh`` block by bash with ``curl`` and
``jq`` against a running engine (the shipped flows), in order; what each must show is checked here."""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from engine.app.runtime import Runtime
from engine.core import keys
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import API_KEY, SHARDS, make_config
from tests.test_walkthrough import bash, doc_blocks

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("jq") is None, reason="the examples need curl and jq"
)


async def test_the_campaign_examples_run_as_written(
    redis_url: str, carrier: SimulatedCarrier, tmp_path: Path
) -> None:
    sh = doc_blocks("Campaigns")
    assert len(sh) == 4
    cfg = make_config(
        redis_url, gateways={"provider": {"type": "http", "url": carrier.url, "sender": "12345"}}
    )
    ann = "+447700900123"
    async with Runtime(cfg) as rt:
        env = {**os.environ, "PARLEY": f"http://127.0.0.1:{rt.http_port}", "KEY": API_KEY}
        defined = orjson.loads(await bash(sh[0], env, tmp_path))
        assert defined["name"] == "appointments" and defined["source"] == "api"
        assert [e["id"] for e in defined["events"]] == ["day_before", "follow_up"]

        assert orjson.loads(await bash(sh[1], env, tmp_path))["fields"]["first_name"] == "Ann"
        ldn = ZoneInfo("Europe/London")
        timers = keys.timers(keys.shard_of(ann, SHARDS))
        for token, when in (("appointments:day_before", datetime(2030, 3, 9, 14, 30, tzinfo=ldn)),
                            ("appointments:follow_up", datetime(2030, 3, 13, 10, 0, tzinfo=ldn))):  # fmt: skip
            score = await rt.store.redis.zscore(timers, keys.timer_member(ann, "k", token))
            assert score == int(when.timestamp() * 1000), token

        state, names = (await bash(sh[2], env, tmp_path)).split()
        assert state in ('"running"', '"done"') and "appointments" in orjson.loads(names)
        assert (await bash(sh[3], env, tmp_path)).strip() == "204"
        assert rt.campaigns.get("appointments") is None
