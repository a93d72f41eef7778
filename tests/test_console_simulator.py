"""The Flows page's simulator (engine/console/simulator.py): turns decided by the engine's own
turn logic on the shipped flows, with ``set`` and ``tag`` changes, timers fired on demand, CRM
calls answered by hand; and nothing written where the engine or a report would read it."""

from __future__ import annotations

from typing import Any

import pytest

from engine.app.runtime import Runtime
from engine.console import simulator
from engine.console.simulator import NUMBER, Sandbox, Simulation, SimulatorError
from engine.core import keys
from engine.core.clock import FakeClock
from gateways.simulators.http_carrier import SimulatedCarrier

ANN = {"first_name": "Ann", "appointment_at": "2026-12-24T10:30:00Z"}


def lines(sim: Simulation, since: int = 0) -> list[tuple[str, str]]:
    return [(x.kind, x.text) for x in sim.lines[since:]]


def begin(rt: Runtime, flow: str, fields: dict[str, Any], **kw: Any) -> Simulation:
    sim = simulator.new(rt.flows.flows[flow], rt.clock.now_ms(), fields, **kw)
    sim.begin(rt)
    return sim


async def test_a_reply_shows_the_answer_and_the_fields_set_and_tags_added(rt: Runtime) -> None:
    sim = begin(rt, "appointment", ANN)
    assert lines(sim) == [
        ("note", "started flow appointment"),
        (
            "out",
            "Hi Ann, a reminder of your appointment on Thu 24 Dec at 10:30. Reply 1 to confirm, 2 to rebook "
            "or 3 to cancel.",
        ),
    ]
    assert sim.waiting_at == "remind"
    mark = len(sim.lines)
    sim.say(rt, "1")
    assert lines(sim, mark) == [
        ("in", "1"),
        ("set", "appointment_status = 'confirmed'"),
        ("tag", "appointment_confirmed"),
        ("out", "Thanks Ann, you're confirmed. See you then!"),
        ("end", "conversation ended: confirmed"),
    ]
    assert sim.fields["appointment_status"] == "confirmed" and sim.tags == ["appointment_confirmed"]
    assert sim.waiting_at is None and sim.pending_timer(rt.flows) is None


async def test_firing_the_pending_timer_moves_the_clock_and_runs_the_reminder(rt: Runtime) -> None:
    sim = begin(rt, "appointment", ANN)
    kind, token, due = sim.pending_timer(rt.flows) or ("", "", 0)
    assert kind == "w" and token.startswith("remind@") and due == sim.now_ms + 4 * 3600 * 1000
    mark = len(sim.lines)
    sim.fire(rt)
    assert lines(sim, mark) == [
        ("timer", "timer fired: no reply in time at remind"),
        ("out", "Can you make your appointment? Reply 1 to confirm, 2 to rebook or 3 to cancel."),
    ]
    assert sim.now_ms == due and sim.waiting_at == "nudge"
    # The nudge has no timeout of its own: what is left is the conversation's expiry (3 days).
    assert (sim.pending_timer(rt.flows) or ("",))[0] == "x"
    sim.fire(rt)
    assert lines(sim)[-1] == ("end", "conversation ended: expired")
    with pytest.raises(SimulatorError, match="no timer is pending"):
        sim.fire(rt)


async def test_stop_opts_the_simulated_contact_out_as_the_engine_would(rt: Runtime) -> None:
    sim = begin(rt, "nps", {"first_name": "Bo"})
    sim.say(rt, "STOP")
    kinds = [k for k, _ in lines(sim)]
    assert kinds[-3:] == ["consent", "out", "end"]
    assert sim.consent == "opted_out" and lines(sim)[-1] == ("end", "conversation ended: opted_out")
    sim.say(rt, "9")
    assert lines(sim)[-1] == ("note", "no answer: the contact opted out (only START opts back in)")


async def test_a_missing_required_field_is_said_and_nothing_starts(rt: Runtime) -> None:
    sim = begin(rt, "appointment", {"first_name": "Ann"})
    assert lines(sim)[-1] == ("note", "not started: the contact lacks a field the flow requires")
    assert sim.waiting_at is None


async def test_a_crm_call_is_shown_not_made_and_answered_by_hand(rt: Runtime) -> None:
    sim = begin(rt, "order_status", {})
    sim.say(rt, "A-1042")
    kind, text = lines(sim)[-1]
    assert kind == "crm" and "/orders/A-1042?contact=%2B447700900000: not called" in text
    mark = len(sim.lines)
    sim.answer_call(rt, True, {"status": "dispatched"})
    assert lines(sim, mark) == [
        ("crm", 'CRM answered (ok): {"status":"dispatched"}'),
        ("out", "A-1042: on its way."),
        ("end", "conversation ended: informed"),
    ]


async def test_a_handoff_is_shown_and_later_texts_go_to_the_inbox(rt: Runtime) -> None:
    flows = rt.flows
    from engine.flows import FlowRegistry
    from tests.conftest import ROOT

    support = FlowRegistry.from_dir(ROOT / "tests" / "transcripts" / "flows").flows["support"]
    flows.flows["support"] = support  # this test's runtime only
    flows.remember(support)
    sim = begin(rt, "support", {})
    sim.say(rt, "2")
    assert lines(sim)[-3:] == [
        ("out", "Putting you through to a person; they will text you here."),
        ("handoff", "handed to a person in the inbox (needs_person); texts now go there"),
        ("end", "conversation ended: handoff"),
    ]
    sim.say(rt, "hello?")
    assert lines(sim)[-1] == ("note", "kept in the inbox for a person (the flow no longer answers)")


async def test_the_simulation_writes_nothing_the_engine_reads_and_sends_nothing(
    rt: Runtime, carrier: SimulatedCarrier
) -> None:
    sim = begin(rt, "appointment", ANN)
    sim.fire(rt)
    sim.say(rt, "2")
    await simulator.save(rt.store, "alice", sim)
    r = rt.store.redis
    written = [k async for k in r.scan_iter(match="*")]
    assert [k for k in written if NUMBER.encode() in k] == []
    shard = keys.shard_of(NUMBER, rt.config.engine.shards)
    for stream in (keys.flow_events(shard), keys.inbound_stream(shard)):
        assert NUMBER.encode() not in repr(await r.xrange(stream)).encode()
    assert NUMBER.encode() not in repr(await r.zrange(keys.timers(shard), 0, -1)).encode()
    assert carrier.received == []
    with pytest.raises(RuntimeError, match="touches no store"):
        _ = Sandbox(rt, FakeClock()).store
    again = await simulator.load(rt.store, "alice", "appointment")
    assert again is not None and lines(again) == lines(sim) and again.state == sim.state
    assert await simulator.load(rt.store, "bob", "appointment") is None
