"""Per-message bookkeeping in time-bucketed hashes (issue 15, item 6): compact, found within its
window (across bucket boundaries) and not after; a send recorded in two slots (the provider-id
map, then the message) loses no receipt whatever comes between."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.app.runtime import Runtime
from engine.conversation.intake import accept_inbound
from engine.core import idmaps, keys
from engine.core.clock import FakeClock
from engine.core.errors import ConfigError
from gateways.base import Receipt
from gateways.receipts import apply_receipt, parked_key, provider_id_call, record_sent
from gateways.registry import validate_gateway_config
from loadtests.bookkeeping import measure
from tests.conftest import make_config, shard

ANN = "+447700900123"
HOUR = 3600.0


@pytest.fixture
async def rt(redis_url: str, clock: FakeClock) -> AsyncIterator[Runtime]:
    gw = {"type": "http", "url": "http://127.0.0.1:9/send", "sender": "1", "rate": 50, "receipt_window": "8h"}
    cfg = make_config(redis_url, engine={"dedupe_window": "2h"}, gateways={"carrier": gw})
    async with Runtime(cfg, clock=clock, http=False, worker=False, senders=False) as runtime:
        yield runtime


async def queued(rt: Runtime, mid: str, number: str = ANN) -> None:
    record = {"id": mid, "dir": "out", "status": "queued", "history": []}
    await rt.store.redis.hset(keys.message_records(number, shard(number)), mid, orjson.dumps(record))


async def status(rt: Runtime, mid: str, number: str = ANN) -> Any:
    raw = await rt.store.redis.hget(keys.message_records(number, shard(number)), mid)
    assert raw is not None
    return orjson.loads(raw)["status"]


async def test_bookkeeping_costs_a_few_tens_of_bytes_a_message_and_stays_listpack(redis_url: str) -> None:
    """A steady stream (real scripts, fake clock at the planned rate): every hash stays in the
    compact encoding and a message costs well under half of a string key each."""
    result = await measure(redis_url, messages=4000)
    b = result["bookkeeping"]
    assert b["encodings"] == ["listpack"], b
    assert b["outbound_bytes_per_message"] < 70 and b["inbound_bytes_per_message"] < 75, b
    assert b["legacy_outbound_bytes_per_message"] > 110 and b["legacy_inbound_bytes_per_message"] > 140, b
    assert result["bytes_per_message_steady"] < 0.5 * (
        b["legacy_outbound_bytes_per_message"] + b["legacy_inbound_bytes_per_message"]
    )


async def test_a_receipt_finds_its_message_across_buckets_within_the_window_and_not_after(
    rt: Runtime, clock: FakeClock
) -> None:
    window = rt.gateways["carrier"].receipt_buckets
    assert window.window_s == 8 * HOUR and window.bucket_s == HOUR
    await queued(rt, "m1")
    await queued(rt, "m2")
    await record_sent(rt, "carrier", "m1", ANN, "p-1")
    await record_sent(rt, "carrier", "m2", ANN, "p-2")
    clock.advance(8 * HOUR - 1)  # seven or eight bucket boundaries later, still in the window
    assert await apply_receipt(rt, "carrier", Receipt("p-1", "delivered")) == "applied"
    assert await status(rt, "m1") == "delivered"
    clock.advance(HOUR + 2)  # past the window and the bucket's slack: no longer looked for
    assert await apply_receipt(rt, "carrier", Receipt("p-2", "delivered")) == "parked"
    assert await status(rt, "m2") == "sent"


async def test_a_bucket_expires_whole_a_window_after_it_ends(rt: Runtime, clock: FakeClock) -> None:
    b = rt.gateways["carrier"].receipt_buckets
    await record_sent(rt, "carrier", "m1", ANN, "p-1")
    key = keys.provider_ids("carrier", b.slot("p-1"), b.bucket(clock.now_ms()))
    assert await rt.store.redis.hget(key, "p-1") == f"{ANN} m1".encode()
    assert b.window_s <= await rt.store.redis.ttl(key) <= b.window_s + b.bucket_s


async def test_a_retried_text_is_dropped_within_the_dedupe_window_and_taken_after(
    rt: Runtime, clock: FakeClock
) -> None:
    async def take() -> str:
        return (
            await accept_inbound(rt, gateway="carrier", contact=ANN, to="1", text="9", provider_id="SM1")
        ).status

    assert await take() == "accepted"
    clock.advance(2 * HOUR - 1)  # across buckets (15 min each), within the 2 h window
    assert await take() == "duplicate"
    other = await accept_inbound(
        rt, gateway="carrier", contact="+447700900456", to="1", text="9", provider_id="SM1"
    )
    assert other.status == "accepted"  # another sender's text with the same id is its own
    clock.advance(HOUR)
    assert await take() == "accepted"


async def history(rt: Runtime, mid: str, number: str = ANN) -> list[str]:
    raw = await rt.store.redis.hget(keys.message_records(number, shard(number)), mid)
    assert raw is not None
    return [h[0] for h in orjson.loads(raw)["history"]]


async def test_a_receipt_before_the_send_is_recorded_is_applied_when_it_is_and_unparked(rt: Runtime) -> None:
    await queued(rt, "m1")
    assert await apply_receipt(rt, "carrier", Receipt("p-1", "failed", "UNDELIV")) == "parked"
    await record_sent(rt, "carrier", "m1", ANN, "p-1")
    assert await status(rt, "m1") == "failed"
    assert await history(rt, "m1") == ["sent", "failed"]
    assert await rt.store.redis.exists(parked_key(rt, "carrier", "p-1")) == 0


async def test_a_receipt_between_the_map_and_the_record_is_applied_and_not_undone(rt: Runtime) -> None:
    """The sender died (or is slow) after mapping the provider id and before recording the send:
    a receipt finds the message through the map at once; the record, when it comes, keeps it."""
    await queued(rt, "m1")
    step1 = provider_id_call(rt, "carrier", "m1", ANN, "p-1")
    assert await rt.store.run("provider_id", keys=step1.to_keys(), args=step1.to_argv()) in (b"", "")
    assert await apply_receipt(rt, "carrier", Receipt("p-1", "delivered")) == "applied"
    assert await status(rt, "m1") == "delivered"
    await record_sent(rt, "carrier", "m1", ANN, "p-1")  # the record (again, from the start)
    assert await status(rt, "m1") == "delivered"
    assert await history(rt, "m1") == ["delivered", "sent"]


@given(window=st.floats(60, 30 * 86400), rate=st.floats(0, 5000), now=st.integers(0, 2**42))
def test_the_plan_keeps_hashes_compact_and_lookups_short(window: float, rate: float, now: int) -> None:
    b = idmaps.plan(window, rate)
    assert b.bucket_s * idmaps.BUCKETS >= b.window_s >= window
    assert len(b.lookback(now)) <= idmaps.BUCKETS + 2
    assert b.lookback(now)[0] == b.bucket(now)
    if b.slots < idmaps.MAX_SLOTS:
        assert (rate or idmaps.DEFAULT_RATE) * b.bucket_s / b.slots <= idmaps.TARGET_ENTRIES
    assert b.window_s <= b.ttl_s(now) <= b.window_s + b.bucket_s


@given(st.text(min_size=1, max_size=80))
def test_a_field_is_short_and_a_digest_is_its_own_field(ident: str) -> None:
    f = idmaps.field(ident)
    assert len(f.encode()) <= idmaps.MAX_FIELD
    assert idmaps.field(f) == f


@pytest.mark.parametrize(
    ("section", "raw", "key"),
    [
        ("gateway", {"receipt_window": "30s"}, "gateways.carrier.receipt_window"),
        ("gateway", {"receipt_window": "60d"}, "gateways.carrier.receipt_window"),
        ("engine", {"inbound_rate": 0}, "engine.inbound_rate"),
        ("engine", {"dedupe_window": "10s"}, "engine.dedupe_window"),
    ],
)
def test_window_mistakes_name_the_key(redis_url: str, section: str, raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        if section == "gateway":
            validate_gateway_config("carrier", {"type": "http", "url": "http://x/", **raw})
        else:
            make_config(redis_url, engine=raw)
    assert info.value.key == key
