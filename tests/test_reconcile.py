"""Exactly once towards a provider that takes no idempotency key (Twilio): a message that may
already be in the provider's hands (read back after a crash, or after a 500 or a timeout) is
looked up there before it is sent again, and recorded as sent with the provider's id if found.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
import yaml

from engine.core import keys
from engine.core.clock import FakeClock
from engine.core.consumer import ensure_group
from engine.core.redis_embedded import free_port
from gateways.base import OutboundMessage
from gateways.registry import build_gateway
from gateways.simulators.twilio_stub import Received, TwilioStub
from tests.conftest import ANN, API_KEY, ROOT, shard
from tests.test_sender import engine, messages, settled, start

SID = "AC" + "1234567890abcdef" * 2
TOKEN = "twilio-auth-token-0123"
FROM = "+15005550006"


def twilio_gw(stub: TwilioStub, **extra: Any) -> dict[str, Any]:
    return {"type": "twilio", "account_sid": SID, "auth_token": TOKEN, "sender": FROM,
            "base_url": stub.base_url, **extra}  # fmt: skip


@pytest.fixture
async def twilio() -> AsyncIterator[TwilioStub]:
    async with TwilioStub(SID, TOKEN) as stub:
        yield stub


def creates(stub: TwilioStub, to: str, text: str) -> list[Received]:
    return [r for r in stub.received if r.sid and r.form["To"] == to and r.form["Body"] == text]


# The stub answers lookups as Twilio's Message resource does ------------------------------------


async def test_the_twilio_stub_lists_messages_newest_first_in_pages_with_twilios_filters(
    twilio: TwilioStub,
) -> None:
    async with build_gateway("tw", twilio_gw(twilio)) as gw:
        for i in range(7):
            await gw.send(
                OutboundMessage(id=f"m{i}", to=ANN if i % 2 else "+12125550123", text=f"t{i}", sender=FROM)
            )
    auth = {"Authorization": aiohttp.encode_basic_auth(SID, TOKEN)}
    base = f"{twilio.base_url}/2010-04-01/Accounts/{SID}/Messages.json"
    async with aiohttp.ClientSession(headers=auth) as s:
        async with s.get(base, params={"To": ANN, "PageSize": "2"}) as r:
            first = await r.json()
        assert [m["body"] for m in first["messages"]] == ["t5", "t3"]  # newest first
        assert first["page"] == 0 and first["page_size"] == 2 and first["previous_page_uri"] is None
        async with s.get(twilio.base_url + first["next_page_uri"]) as r:
            second = await r.json()
        assert [m["body"] for m in second["messages"]] == ["t1"] and second["next_page_uri"] is None
        async with s.get(base, params={"DateSent>": "2000-01-01", "From": "+15550000000"}) as r:
            assert (await r.json())["messages"] == []
        async with s.get(base, params={"DateSent<": "2000-01-01"}) as r:
            assert (await r.json())["messages"] == []
        sid = first["messages"][0]["sid"]
        async with s.get(f"{twilio.base_url}/2010-04-01/Accounts/{SID}/Messages/{sid}.json") as r:
            one = await r.json()
        assert one["sid"] == sid and one["status"] == "sent" and one["date_sent"].endswith("+0000")
        async with s.get(f"{twilio.base_url}/2010-04-01/Accounts/{SID}/Messages/SMnope.json") as r:
            assert r.status == 404 and (await r.json())["code"] == 20404
    async with aiohttp.ClientSession() as s, s.get(base) as r:
        assert r.status == 401


async def test_find_sent_walks_the_pages_back_to_the_message_and_no_further(twilio: TwilioStub) -> None:
    wanted = OutboundMessage(id="m-wanted", to=ANN, text="Your code is 4412", sender=FROM)
    async with build_gateway("tw", twilio_gw(twilio)) as gw:
        sid = (await gw.send(wanted)).provider_id
        for i in range(120):  # 2.4 pages of later messages to the same number
            await gw.send(OutboundMessage(id=f"m{i}", to=ANN, text=f"later {i}", sender=FROM))
        now_ms = int(twilio.now() * 1000)
        assert await gw.find_sent(wanted, now_ms - 60_000) == [sid]
        assert await gw.find_sent(wanted, now_ms + 60_000) == []  # created before the window
        other = OutboundMessage(id="m-other", to=ANN, text="Your code is 9999", sender=FROM)
        assert await gw.find_sent(other, now_ms - 60_000) == []
    assert twilio.lookups == 3 + 1 + 3  # pages of 50; the second search stops at the first page


# In process: read back after a crash, or a 500 after Twilio took it -----------------------------


async def pending_reply(redis_url: str, gateway: str, msg_id: str, text: str, now_ms: int) -> None:
    """What a sender that died after handing ``msg_id`` to the provider leaves behind: the record
    still ``queued``, the lane entry read (pending under this host's sender) and not acknowledged."""
    r = aioredis.Redis.from_url(redis_url)
    lane = keys.outbound_stream(shard(ANN), gateway)
    await ensure_group(r, lane, keys.OUTBOUND_GROUP)
    rec = {"id": msg_id, "dir": "out", "text": text, "to": ANN, "gateway": gateway, "status": "queued",
           "at": now_ms, "history": [["queued", now_ms]]}  # fmt: skip
    await r.zadd(keys.message_index(ANN, shard(ANN)), {msg_id: now_ms})
    await r.hset(keys.message_records(ANN, shard(ANN)), msg_id, orjson.dumps(rec))
    await r.xadd(lane, {"m": msg_id, "c": ANN, "t": text, "q": now_ms})
    await r.xreadgroup(keys.OUTBOUND_GROUP, "dead-host-1-s-0", {lane: ">"})
    await r.aclose()


async def test_a_message_twilio_took_before_the_crash_is_recorded_not_sent_again(
    redis_url: str, tmp_path: Path, twilio: TwilioStub
) -> None:
    now_ms = int(twilio.now() * 1000)
    await pending_reply(redis_url, "tw", "out-x-0", "Your table is ready", now_ms)
    async with build_gateway("tw", twilio_gw(twilio)) as gw:  # the send the crash interrupted
        sid = await gw.send(OutboundMessage(id="out-x-0", to=ANN, text="Your table is ready", sender=FROM))
    async for e in engine(redis_url, tmp_path, {"tw": twilio_gw(twilio)}):
        rec = await settled(e.api)
        metrics = e.rt.metrics.render().decode()
    assert rec["status"] == "sent" and rec["provider_id"] == sid.provider_id
    assert len(creates(twilio, ANN, "Your table is ready")) == 1  # the customer got it once
    assert 'parley_outbound_total{gateway="tw",status="reconciled"} 1.0' in metrics


async def test_a_message_twilio_never_got_is_sent_after_the_lookup(
    redis_url: str, tmp_path: Path, twilio: TwilioStub
) -> None:
    now_ms = int(twilio.now() * 1000)
    await pending_reply(redis_url, "tw", "out-x-0", "Your table is ready", now_ms)
    async for e in engine(redis_url, tmp_path, {"tw": twilio_gw(twilio)}):
        rec = await settled(e.api)
    (got,) = creates(twilio, ANN, "Your table is ready")
    assert rec["status"] == "sent" and rec["provider_id"] == got.sid
    assert twilio.lookups == 1


async def test_an_earlier_message_with_the_same_text_is_not_taken_for_this_one(
    redis_url: str, tmp_path: Path, twilio: TwilioStub, clock: FakeClock
) -> None:
    """The customer was sent "Thanks!" a minute ago (recorded, sid known); a second "Thanks!" is
    read back after a crash before it reached Twilio: the lookup sees only the first, which another
    message owns, so the second is sent."""
    clock.advance(twilio.now() - clock.now_ms() / 1000)
    async for e in engine(redis_url, tmp_path, {"tw": twilio_gw(twilio)}, clock):
        await start(e.api, "note", [ANN], text="Thanks!")
        first = await settled(e.api)
    await pending_reply(redis_url, "tw", "out-x-9", "Thanks!", clock.now_ms())
    async for e in engine(redis_url, tmp_path, {"tw": twilio_gw(twilio)}, clock):
        second = await settled(e.api)
    assert second["id"] == "out-x-9" and second["status"] == "sent"
    assert second["provider_id"] != first["provider_id"]
    assert len(creates(twilio, ANN, "Thanks!")) == 2 and twilio.lookups == 1


async def test_a_500_after_twilio_took_the_message_is_reconciled_not_sent_twice(
    redis_url: str, tmp_path: Path, twilio: TwilioStub
) -> None:
    def fail_once(_: Received) -> None:
        twilio.on_create = None
        raise RuntimeError("Twilio took it, then broke before answering")  # aiohttp answers 500

    twilio.on_create = fail_once
    async for e in engine(redis_url, tmp_path, {"tw": twilio_gw(twilio, backoff="10ms")}):
        await start(e.api, "note", [ANN], text="See you at 8")
        rec = await settled(e.api)
    (got,) = creates(twilio, ANN, "See you at 8")
    assert rec["status"] == "sent" and rec["provider_id"] == got.sid
    assert [h["status"] for h in rec["history"]] == ["queued", "sent"]


# A real process killed between Twilio's answer and the status record ----------------------------


async def test_parley_killed_after_twilio_took_a_reply_sends_it_exactly_once_after_restart(
    redis_url: str, tmp_path: Path, twilio: TwilioStub
) -> None:
    """``parley run`` is SIGKILLed the moment Twilio has the reply (before its answer reaches the
    sender, so before the status is recorded); started again, it finds the reply pending, asks
    Twilio, finds it there and records it: the customer has the text once."""
    port = free_port()
    config = {
        "redis": {"url": redis_url},
        "http": {"port": port},
        "api": {"keys": [API_KEY]},
        "engine": {"flows_dir": str(ROOT / "rules"), "shards": 2},
        "gateways": {"tw": twilio_gw(twilio, sender="12345")},
        "log": {"level": "warning"},
    }
    path = tmp_path / "parley.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}

    async def run() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine.app.cli", "--config", str(path), "run",
            cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip

    async def healthy(api: aiohttp.ClientSession) -> None:
        for _ in range(400):
            try:
                async with api.get("/healthz") as r:
                    if r.status == 200 and (await r.json())["status"] == "ok":
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise AssertionError("parley run did not become healthy")

    proc = await run()
    killed = asyncio.Event()

    def kill(_: Received) -> None:
        twilio.on_create = None
        os.kill(proc.pid, signal.SIGKILL)
        killed.set()

    twilio.on_create = kill
    async with aiohttp.ClientSession(
        f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {API_KEY}"}
    ) as api:
        await healthy(api)
        answer = await twilio.text_in(f"http://127.0.0.1:{port}/v1/inbound/tw", ANN, "12345", "NPS")
        assert answer.status == 200, answer.body
        await asyncio.wait_for(killed.wait(), 20)
        await proc.wait()
        assert proc.returncode == -signal.SIGKILL
        (greeting,) = [r for r in twilio.received if r.sid and r.form["To"] == ANN]
        proc = await run()
        try:
            await healthy(api)
            for _ in range(400):
                out = [m for m in await messages(api) if m["dir"] == "out"]
                if out and out[-1]["status"] != "queued":
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # a second send would reach Twilio by now
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()[-2000:]
    assert [r.sid for r in twilio.received if r.sid and r.form["To"] == ANN] == [greeting.sid]
    assert out[-1]["status"] == "sent" and out[-1]["provider_id"] == greeting.sid
    assert twilio.lookups >= 1
