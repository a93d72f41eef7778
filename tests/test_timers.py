"""Reply timeouts and expiry: timers live in Redis, fire on the fake clock, and race replies safely."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.app.runtime import Runtime
from engine.conversation import conversations, intake
from engine.conversation.worker import fire_timers
from engine.core import contacts, keys
from engine.core.clock import FakeClock
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import ANN, Turns, eventually, make_config, process_stream
from tests.conftest import outbound as queued

REMIND = """
name: remind
expire_after: 2d
start: ask
nodes:
  ask:
    say: Will you come on Friday? Reply YES or NO.
    wait: {save: answer, timeout: {after: 1h, goto: nudge}}
    cases:
      - {when: yes, goto: great}
      - {when: no, goto: sorry}
    reprompt: {say: Please reply YES or NO., max: 1}
  nudge:
    say: Just checking - will you come on Friday? YES or NO.
    wait: {save: answer}
    cases:
      - {when: yes, goto: great}
      - {when: no, goto: sorry}
    reprompt: {say: Please reply YES or NO., max: 1}
  great: {say: See you Friday!, end: confirmed}
  sorry: {say: Sorry to miss you., end: declined}
"""


@pytest.fixture
def flows_dir(tmp_path: Path) -> Path:
    (tmp_path / "remind.yaml").write_text(REMIND)
    return tmp_path


def _cfg(redis_url: str, carrier: SimulatedCarrier, flows_dir: Path):  # type: ignore[no-untyped-def]
    return make_config(
        redis_url,
        engine={"flows_dir": str(flows_dir), "timer_poll": "1h"},  # tests fire timers themselves
        gateways={"carrier": {"type": "http", "url": carrier.url}},
    )


@pytest.fixture
async def engine(
    redis_url: str, carrier: SimulatedCarrier, flows_dir: Path, clock: FakeClock
) -> AsyncIterator[tuple[Runtime, Turns]]:
    async with Runtime(_cfg(redis_url, carrier, flows_dir), clock=clock, http=False) as rt:
        turns = Turns()
        assert rt.worker is not None
        rt.worker.listeners.append(turns)
        await contacts.upsert(rt.store, rt.config.engine.shards, contacts.Contact(ANN), clock.now_ms())
        (eid,) = await intake.enqueue_starts(rt, "remind", [ANN], {})
        await turns.wait(eid)
        assert (await carrier.next_message(ANN)).text.startswith("Will you come")
        yield rt, turns


async def _say(rt: Runtime, text: str, pid: str) -> str:
    return (
        await intake.accept_inbound(rt, gateway="carrier", contact=ANN, to="1", text=text, provider_id=pid)
    ).event_id


async def test_no_reply_within_the_timeout_sends_the_reminder(
    engine: tuple[Runtime, Turns], carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    rt, turns = engine
    assert rt.worker is not None
    clock.advance(59 * 60)
    assert await rt.worker.fire_timers() == 0
    clock.advance(2 * 60)
    assert await rt.worker.fire_timers() == 1
    assert (await carrier.next_message(ANN)).text == "Just checking - will you come on Friday? YES or NO."
    state = await conversations.load_state(rt.store, rt.config.engine.shards, ANN)
    assert state is not None and state["n"] == "nudge"
    await turns.wait(await _say(rt, "yes", "r1"))
    assert (await carrier.next_message(ANN)).text == "See you Friday!"


async def test_an_answer_cancels_the_reminder(
    engine: tuple[Runtime, Turns], carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    rt, turns = engine
    assert rt.worker is not None
    await turns.wait(await _say(rt, "no", "r1"))
    assert (await carrier.next_message(ANN)).text == "Sorry to miss you."
    assert await rt.store.redis.zcard(keys.timers(keys.shard_of(ANN, rt.config.engine.shards))) == 0
    clock.advance(3 * 86400)
    assert await rt.worker.fire_timers() == 0


async def test_expiry_ends_a_silent_conversation(
    engine: tuple[Runtime, Turns], carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    rt, _ = engine
    assert rt.worker is not None
    clock.advance(3600 + 1)
    await rt.worker.fire_timers()
    await carrier.next_message(ANN)  # the reminder
    clock.advance(2 * 86400)
    assert await rt.worker.fire_timers() == 1
    stream = keys.inbound_stream(keys.shard_of(ANN, rt.config.engine.shards))

    async def ended() -> dict | None:  # the expiry is processed silently: nothing to wait on
        state = await conversations.load_state(rt.store, rt.config.engine.shards, ANN)
        return state if state and state.get("o") else None

    state = await eventually(ended)
    assert state is not None and state["o"] == "expired" and state["n"] is None
    assert await rt.store.redis.xlen(stream) == 0
    assert len([m for m in carrier.received if m.to == ANN]) == 2


@pytest.mark.parametrize("reply_first", [True, False], ids=["reply_first", "timer_first"])
async def test_a_timer_racing_a_reply_has_exactly_one_outcome(
    redis_url: str, carrier: SimulatedCarrier, flows_dir: Path, clock: FakeClock, reply_first: bool
) -> None:
    """Both events reach the contact's stream before either is processed, in the order under
    test; the stream is then processed in order, as the worker does."""
    cfg = _cfg(redis_url, carrier, flows_dir)
    async with Runtime(cfg, clock=clock, http=False, worker=False, senders=False) as rt:
        await contacts.upsert(rt.store, rt.config.engine.shards, contacts.Contact(ANN), clock.now_ms())

        async def process() -> list[str]:
            return await process_stream(rt, ANN)

        await intake.enqueue_starts(rt, "remind", [ANN], {})
        assert await process() == ["started"]
        clock.advance(2 * 3600)
        if reply_first:
            await _say(rt, "yes", "late")
            assert await fire_timers(rt) == 1
            assert await process() == ["replied", "stale_timer"]
        else:
            assert await fire_timers(rt) == 1
            await _say(rt, "yes", "late")
            assert await process() == ["timed_out", "replied"]
        outbound = [f[b"t"].decode() for f in await queued(rt, "carrier")]
        state = await conversations.load_state(rt.store, rt.config.engine.shards, ANN)
    assert state is not None and state["o"] == "confirmed"
    assert state["r"]["answer"]["v"] is True
    expected = ["Will you come on Friday? Reply YES or NO."]
    if not reply_first:
        expected.append("Just checking - will you come on Friday? YES or NO.")
    assert outbound == [*expected, "See you Friday!"]
