"""The Conversations page's data (issue 20), against a real engine: a contact's transcript with
each reply's latency and delivery status, and the live tail of outcome events over every shard.
The pages that show them are tested in tests/test_console_convo.py."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from engine.app.runtime import Runtime
from engine.console import tail, transcript
from engine.console.transcript import Line
from engine.core.clock import FakeClock
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import API_KEY, eventually, make_config

pytestmark = pytest.mark.redis_modes

ANN, RAJ = "+447700900123", "+447700900456"
SECRET = "console-data-secret"


@pytest.fixture
async def engine(redis_url: str, carrier: SimulatedCarrier, clock: FakeClock) -> AsyncIterator[Runtime]:
    """A running engine whose carrier sends a delivery receipt after each message."""
    gw = {"type": "http", "url": carrier.url, "sender": "12345", "webhook_secret": SECRET}
    cfg = make_config(redis_url, gateways={"carrier": gw})
    async with Runtime(cfg, clock=clock) as rt:
        carrier.receipt_url = f"http://127.0.0.1:{rt.http_port}/v1/receipts/carrier"
        carrier.receipt_secret = SECRET
        carrier.receipts = "after"
        yield rt


@pytest.fixture
async def api(engine: Runtime) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        f"http://127.0.0.1:{engine.http_port}", headers={"Authorization": f"Bearer {API_KEY}"}
    ) as session:
        yield session


async def say(api: aiohttp.ClientSession, carrier: SimulatedCarrier, sender: str, text: str, pid: str) -> str:
    """The customer texts; returns the engine's answer as the handset got it."""
    body = orjson.dumps({"from": sender, "to": "12345", "text": text, "id": pid})
    ts = int(time.time())  # signed as the carrier signs (the documented scheme)
    mac = hmac.new(SECRET.encode(), b"%d." % ts + body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-Parley-Timestamp": str(ts),
        "X-Parley-Signature": f"sha256={mac}",
    }
    async with api.post("/v1/inbound/carrier", data=body, headers=headers) as r:
        assert r.status == 202, await r.text()
    return (await carrier.next_message(sender)).text


async def settled(rt: Runtime, number: str, n: int) -> list[Line]:
    """The transcript once it has ``n`` lines, every one in a final status."""

    async def probe() -> list[Line] | None:
        got = await transcript.transcript(rt.store, rt.config.engine.shards, number)
        return got.lines if len(got.lines) == n and all(x.final for x in got.lines) else None

    lines: list[Line] = await eventually(probe, attempts=2000)
    return lines


async def test_a_transcript_shows_each_reply_with_its_latency_and_delivery(
    engine: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier
) -> None:
    assert (await say(api, carrier, ANN, "csat", "a-1")).startswith("Hi there, how satisfied")
    assert await say(api, carrier, ANN, "5", "a-2") == "Thank you, that's great to hear!"
    lines = await settled(engine, ANN, 4)
    assert [(x.direction, x.text[:9], x.status) for x in lines] == [
        ("in", "csat", "received"),
        ("out", "Hi there,", "delivered"),
        ("in", "5", "received"),
        ("out", "Thank you", "delivered"),
    ]
    texts, replies = lines[0::2], lines[1::2]
    assert all(x.latency_ms is None and x.reply_to is None for x in texts)
    for text, reply in zip(texts, replies, strict=True):
        assert reply.reply_to == text.id and reply.flow == "csat"
        assert reply.turn_ms is not None and reply.latency_ms is not None
        assert 0 <= reply.turn_ms <= reply.latency_ms
        assert [h[0] for h in reply.history] == ["queued", "sent", "delivered"]

    # A page of one: the reply's text is on the older page, and its latency is still known.
    page = await transcript.transcript(engine.store, engine.config.engine.shards, ANN, limit=1)
    assert [x.id for x in page.lines] == [lines[3].id] and page.older is not None
    assert page.lines[0].reply_to == lines[2].id and page.lines[0].latency_ms == lines[3].latency_ms
    older = await transcript.transcript(
        engine.store, engine.config.engine.shards, ANN, limit=10, before=page.older
    )
    assert [x.id for x in older.lines] == [x.id for x in lines[:3]] and older.older is None


def rec(mid: str, direction: str, at: int, history: list[list[Any]], **more: Any) -> dict[str, Any]:
    status = history[-1][0]
    return {"id": mid, "dir": direction, "text": mid, "at": at, "status": status, "history": history, **more}


#: (label, the log page, expected (status, reply_to, turn_ms, latency_ms) of its last line)
CASES: list[tuple[str, list[dict[str, Any]], tuple[str, str | None, int | None, int | None]]] = [
    ("a reply sent and delivered", [
        rec("in-0-1000-0", "in", 1000, [["received", 1000]]),
        rec("out-0-1000-0-0", "out", 1012, [["queued", 1012], ["sent", 1040], ["delivered", 3000]],
            cause="0/1000-0"),
    ], ("delivered", "in-0-1000-0", 12, 40)),
    ("a reply not sent yet has no latency", [
        rec("in-0-1000-0", "in", 1000, [["received", 1000]]),
        rec("out-0-1000-0-0", "out", 1012, [["queued", 1012]], cause="0/1000-0"),
    ], ("queued", "in-0-1000-0", 12, None)),
    ("the gate refused it", [
        rec("in-3-7-1", "in", 7, [["received", 7]]),
        rec("out-3-7-1-0", "out", 9, [["blocked", 9]], cause="3/7-1", error="capped: 4 per 30d"),
    ], ("refused", "in-3-7-1", None, None)),
    ("a journey's message answers no text", [
        rec("out-1-50-0-0", "out", 50, [["queued", 50], ["sent", 60]], cause="1/50-0", flow="nps"),
    ], ("sent", None, None, None)),
    ("a late 'sent' after 'delivered' counts from the first send", [
        rec("in-0-1-0", "in", 100, [["received", 100]]),
        rec("out-0-1-0-1", "out", 110, [["queued", 110], ["sent", 130], ["delivered", 200], ["sent", 900]],
            cause="0/1-0", status="delivered"),
    ], ("delivered", "in-0-1-0", 10, 30)),
]  # fmt: skip


@pytest.mark.parametrize(("label", "page", "want"), CASES, ids=[c[0] for c in CASES])
def test_latency_is_read_from_the_log(
    label: str, page: list[dict[str, Any]], want: tuple[str, str | None, int | None, int | None]
) -> None:
    last = transcript.assemble(page)[-1]
    assert (last.status, last.reply_to, last.turn_ms, last.latency_ms) == want, label


async def test_the_live_tail_shows_turns_across_contacts_newest_first_and_polls_cheaply(
    engine: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier
) -> None:
    shards = engine.config.engine.shards
    await say(api, carrier, ANN, "csat", "t-1")
    await say(api, carrier, RAJ, "csat", "t-2")
    await say(api, carrier, ANN, "4", "t-3")

    async def ended() -> list[tail.TailEvent] | None:
        got = await tail.recent(engine.store, shards, limit=50)
        return got if any(e.kind == "ended" for e in got) else None

    events = await eventually(ended, attempts=2000)
    assert [e.ms for e in events] == sorted((e.ms for e in events), reverse=True)
    assert {e.contact for e in events} == {ANN, RAJ}
    ann = [e.summary for e in events if e.contact == ANN and e.kind != "message"]
    assert ann[:3] == [
        "ended: completed, last node ask",
        "csat_score = 4 (satisfied)",
        "replied at ask after 0.0 s",
    ]
    assert "started csat" in ann and all(e.flow == "csat" for e in events)
    assert len(await tail.recent(engine.store, shards, limit=2)) == 2

    # A poll from the newest it has gets that instant's events back (it drops those it holds)
    # and later ones (a receipt may land meanwhile): nothing older is read again.
    newest = events[0].ms
    again = await tail.recent(engine.store, shards, since=newest)
    assert all(e.ms >= newest for e in again)
    assert {e.id for e in events if e.ms == newest} <= {e.id for e in again}
    await say(api, carrier, RAJ, "1", "t-4")

    async def more() -> list[tail.TailEvent] | None:
        got = await tail.recent(engine.store, shards, since=newest)
        return got if any(e.kind == "result" and e.contact == RAJ for e in got) else None

    fresh = await eventually(more, attempts=2000)
    assert all(e.ms >= newest for e in fresh)
    assert {"replied at ask after 0.0 s", "csat_score = 1 (unsatisfied)"} <= {e.summary for e in fresh}
