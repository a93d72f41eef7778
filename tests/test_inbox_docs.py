"""docs/api.md's "The inbox (human handoff)", run as written: each ``sh`` block by bash with
``curl`` and ``jq`` against a running engine (``engine.unmatched: inbox``), in order; the
``json`` examples have the fields the engine answers with."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.app.runtime import Runtime
from engine.conversation import inbox, intake
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import API_KEY, eventually, make_config, serve
from tests.test_walkthrough import Crm, bash, doc_blocks

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("jq") is None, reason="the examples need curl and jq"
)
ANN, RAJ = "+447700900123", "+447700900456"


def blocks(kind: str) -> list[str]:
    return doc_blocks("The inbox (human handoff)", kind)


async def test_the_inbox_examples_run_as_written(
    redis_url: str, carrier: SimulatedCarrier, tmp_path: Path
) -> None:
    sh = blocks("sh")
    listed_doc, reply_doc = (orjson.loads(b) for b in blocks("json"))
    assert len(sh) == 5
    crm = Crm()
    async with serve(("POST", "/hooks", crm.hook)) as base:
        hook = {"url": f"{base}/hooks", "secret": "a-long-shared-secret-for-hmac", "events": ["inbox"]}
        cfg = make_config(
            redis_url,
            engine={"unmatched": "inbox"},
            crm={"webhooks": [hook]},
            gateways={"carrier": {"type": "http", "url": carrier.url, "sender": "12345"}},
        )
        await run(cfg, sh, listed_doc, reply_doc, carrier, tmp_path, crm)


async def run(
    cfg: Any,
    sh: list[str],
    listed_doc: Any,
    reply_doc: Any,
    carrier: SimulatedCarrier,
    tmp_path: Path,
    crm: Crm,
) -> None:
    """The section's commands in order against an engine, each one's answer checked."""
    async with Runtime(cfg) as rt:
        env = {**os.environ, "PARLEY": f"http://127.0.0.1:{rt.http_port}", "KEY": API_KEY}
        for n, words in ((ANN, "where is my parcel?"), (RAJ, "hello?")):
            await intake.accept_inbound(
                rt, gateway="carrier", contact=n, to="12345", text=words, provider_id=n
            )

        async def both() -> bool:
            return all([await inbox.load(rt.store, rt.config.engine.shards, n) for n in (ANN, RAJ)])

        await eventually(both)

        listed = orjson.loads(await bash(sh[0], env, tmp_path))
        assert sorted(i["contact"] for i in listed["items"]) == [ANN, RAJ]
        assert set(listed) == set(listed_doc) and set(listed["items"][0]) == set(listed_doc["items"][0])
        assert {i["reason"] for i in listed["items"]} == {"unmatched"}

        out = await bash(sh[1], env, tmp_path)
        claimed, end = json.JSONDecoder().raw_decode(out)  # the claim, then the second one's status
        assert claimed == {"contact": ANN, "operator": "alice", "status": "claimed"}
        assert out[end:].strip() == "409"

        replied = orjson.loads(await bash(sh[2], env, tmp_path))
        assert set(replied) == set(reply_doc)
        got = await carrier.next_message(ANN)
        assert (got.text, got.id) == ("It is out for delivery today.", replied["message_id"])

        returned = orjson.loads(await bash(sh[3], env, tmp_path))
        assert returned["contact"] == ANN
        assert (await carrier.next_message(ANN)).text.startswith("Hi there, how satisfied were you")

        assert orjson.loads(await bash(sh[4], env, tmp_path))["contact"] == RAJ

        async def emptied() -> bool:
            return not any([await inbox.load(rt.store, rt.config.engine.shards, n) for n in (ANN, RAJ)])

        await eventually(emptied)

        # Each step, pushed to the CRM as an outcome event of type inbox, in order per contact.
        async def pushed() -> bool:
            steps = {n: [e["step"] for e in crm.events if e["contact"] == n] for n in (ANN, RAJ)}
            return steps == {
                ANN: ["handed_off", "claimed", "replied", "returned"],
                RAJ: ["handed_off", "closed"],
            }

        await eventually(pushed, attempts=2000)
        event = next(e for e in crm.events if e["step"] == "replied")
        assert (event["type"], event["by"], event["message_id"]) == ("inbox", "alice", replied["message_id"])
