"""The Flows page's counts (engine/console/flow_counts.py): contacts waiting at each node, read
from the real sessions of a running engine, bounded, and shared for a few seconds."""

from __future__ import annotations

from engine.app.runtime import Runtime
from engine.console import flow_counts
from engine.conversation import intake
from engine.core.clock import FakeClock
from tests.conftest import Turns

CONTACTS = [f"+4477009001{i:02d}" for i in range(12)]


async def test_contacts_waiting_are_counted_at_their_node_and_the_read_is_bounded(
    rt: Runtime, turns: Turns, clock: FakeClock
) -> None:
    for event_id in await intake.enqueue_starts(rt, "nps", CONTACTS, {}):
        assert (await turns.wait(event_id)).result == "started"
    answer = await rt.accept_inbound(
        gateway="carrier", contact=CONTACTS[0], to="12345", text="10", provider_id="pid-1"
    )
    await turns.wait(answer.event_id)  # a promoter: asked why, at another node

    counts = flow_counts.FlowCounts(rt.store, rt.config.engine.shards, clock)
    waiting = await counts.waiting()
    assert waiting.complete and waiting.read == 12
    assert waiting.of("nps") == {"ask_score": 11, "ask_promoter": 1}
    assert waiting.of("appointment") == {}

    # Shared for a few seconds: a new conversation shows after the cache time, not before.
    (late,) = await intake.enqueue_starts(rt, "nps", ["+447700900199"], {})
    await turns.wait(late)
    assert (await counts.waiting()).of("nps")["ask_score"] == 11
    clock.advance(flow_counts.WAITING_TTL_S + 1)
    assert (await counts.waiting()).of("nps")["ask_score"] == 12

    sample = await flow_counts.read_waiting(rt.store, rt.config.engine.shards, limit=5)
    assert not sample.complete and sample.read == 5
    assert sum(sample.of("nps").values()) == sample.read
