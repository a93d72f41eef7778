"""CRM webhook calls from a flow, against a stub CRM on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from engine.app.runtime import Runtime
from engine.conversation import conversations, intake
from engine.conversation.worker import fire_timers
from engine.core import contacts, keys
from engine.core.clock import FakeClock
from gateways.console import ConsoleGateway
from tests.conftest import ANN, Turns, make_config, process_stream, serve, shard
from tests.conftest import outbound as queued

FLOW = """
name: lookup
start: fetch
nodes:
  fetch:
    say: One moment, checking your account...
    call:
      url: "{{ params.crm }}/customers/{{ contact.number | urlencode }}"
      headers: {Authorization: "Bearer crm-token"}
      timeout: 500ms
      save: crm
    success: tell
    failure: sorry
  tell:
    say: "Your balance is {{ results.crm.balance | default(0) | currency }}."
    end: told
  sorry:
    say: Sorry, we can't see your account right now.
    end: crm_down
"""


class StubCrm:
    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0
        self.seen: list[tuple[str, str]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, request.headers.get("Authorization", "")))
        await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status)
        return web.json_response({"balance": 12.5, "tier": "gold"})


@pytest.fixture
async def crm() -> AsyncIterator[StubCrm]:
    stub = StubCrm()
    async with serve(("GET", "/customers/{number}", stub.handle)) as stub.url:
        yield stub


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    (tmp_path / "lookup.yaml").write_text(FLOW)
    return tmp_path


def _cfg(redis_url: str, flows: Path):  # type: ignore[no-untyped-def]
    return make_config(redis_url, engine={"flows_dir": str(flows)}, gateways={"console": {"type": "console"}})


async def _conversation(rt: Runtime, crm: StubCrm) -> list[str]:
    await contacts.upsert(rt.store, rt.config.engine.shards, contacts.Contact(ANN), rt.clock.now_ms())
    turns = Turns()
    assert rt.worker is not None
    rt.worker.listeners.append(turns)
    console = rt.gateways["console"]
    assert isinstance(console, ConsoleGateway)
    await intake.enqueue_starts(rt, "lookup", [ANN], {"crm": crm.url})
    return [(await asyncio.wait_for(console.outbox.get(), 5)).text for _ in range(2)]


async def test_the_crm_answer_routes_and_fills_the_message(redis_url: str, flows: Path, crm: StubCrm) -> None:
    async with Runtime(_cfg(redis_url, flows), http=False) as rt:
        said = await _conversation(rt, crm)
        state = await conversations.load_state(rt.store, rt.config.engine.shards, ANN)
    assert said == ["One moment, checking your account...", "Your balance is £12.50."]
    assert crm.seen == [("/customers/+447700900123", "Bearer crm-token")]
    assert state is not None and state["o"] == "told" and state["r"]["crm"]["v"]["tier"] == "gold"


@pytest.mark.parametrize(
    ("status", "delay", "error"), [(500, 0.0, "HTTP 500"), (200, 2.0, "no answer within")]
)
async def test_a_failing_or_slow_crm_takes_the_failure_route(
    redis_url: str, flows: Path, crm: StubCrm, status: int, delay: float, error: str
) -> None:
    crm.status, crm.delay = status, delay
    async with Runtime(_cfg(redis_url, flows), http=False) as rt:
        said = await _conversation(rt, crm)
        state = await conversations.load_state(rt.store, rt.config.engine.shards, ANN)
    assert said[1] == "Sorry, we can't see your account right now."
    assert state is not None and state["o"] == "crm_down" and error in state["r"]["crm"]["v"]["error"]


async def test_no_answer_at_all_is_caught_by_the_safety_timer(
    redis_url: str, flows: Path, clock: FakeClock
) -> None:
    """No caller runs (as if every caller were down): the session's safety timer fails the call."""
    async with Runtime(_cfg(redis_url, flows), clock=clock, http=False, worker=False, senders=False) as rt:
        await contacts.upsert(rt.store, rt.config.engine.shards, contacts.Contact(ANN), clock.now_ms())

        async def process() -> list[str]:
            return await process_stream(rt, ANN)

        await intake.enqueue_starts(rt, "lookup", [ANN], {"crm": "http://127.0.0.1:9"})
        assert await process() == ["started"]
        assert await rt.store.redis.xlen(keys.calls(shard(ANN))) == 1
        await intake.accept_inbound(
            rt, gateway="console", contact=ANN, to="p", text="hello?", provider_id="x"
        )
        assert await process() == ["replied"]  # logged; the conversation still waits on the CRM
        clock.advance(5)
        assert await fire_timers(rt) == 0
        clock.advance(10)
        assert await fire_timers(rt) == 1
        assert await process() == ["timed_out"]
        outbound = [f[b"t"].decode() for f in await queued(rt, "console")]
        state = await conversations.load_state(rt.store, rt.config.engine.shards, ANN)
    assert outbound == ["One moment, checking your account...", "Sorry, we can't see your account right now."]
    assert state is not None and state["o"] == "crm_down"


async def test_every_consumer_recovers_when_redis_loses_its_data(
    redis_url: str, flows: Path, crm: StubCrm
) -> None:
    """A Redis restarted without its data has no consumer groups; the worker, the caller and the
    sender each create theirs again and the next conversation runs end to end."""
    async with Runtime(_cfg(redis_url, flows), http=False) as rt:
        await rt.store.redis.flushdb()
        said = await _conversation(rt, crm)
    assert said == ["One moment, checking your account...", "Your balance is £12.50."]


FRESH = """
name: fresh
start: fetch
nodes:
  fetch:
    call:
      url: "{{ params.crm }}/customers/{{ contact.number | urlencode }}"
      timeout: 500ms
      cache: 10m
      fields: {tier: tier, balance: balance}
    success: tell
    failure: sorry
  tell:
    say: "Hello {{ contact.tier | default('new') }} member, your balance is {{ contact.balance | default(0) }}."
    end: told
  sorry:
    say: Sorry.
    end: crm_down
"""


async def test_a_crm_lookup_refreshes_contact_fields_and_is_cached(
    redis_url: str, tmp_path: Path, crm: StubCrm
) -> None:
    (tmp_path / "fresh.yaml").write_text(FRESH)
    async with Runtime(_cfg(redis_url, tmp_path), http=False) as rt:
        await contacts.upsert(
            rt.store,
            rt.config.engine.shards,
            contacts.Contact(ANN, fields={"tier": "silver"}),
            rt.clock.now_ms(),
        )
        console = rt.gateways["console"]
        assert isinstance(console, ConsoleGateway)
        for _ in range(2):
            await intake.enqueue_starts(rt, "fresh", [ANN], {"crm": crm.url}, interrupt=True)
            msg = await asyncio.wait_for(console.outbox.get(), 5)
            assert msg.text == "Hello gold member, your balance is 12.5."  # the CRM's tier, not ours
        stored = await contacts.get(rt.store, rt.config.engine.shards, ANN)
        assert stored is not None and stored.fields == {"tier": "gold", "balance": 12.5}
        assert len(crm.seen) == 1  # the second lookup came from the cache


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        ("{url: 'http://x', method: POST, cache: 1m}", "only a GET's answer can be cached"),
        ("{url: 'http://x', cache: 2d}", "call cache must be between 0 and 1d"),
        ("{url: 'http://x', fields: {number: n}}", "'number' is not a contact field name"),
        ("{url: 'http://x', fields: [tier]}", "call fields must map contact field -> answer path"),
    ],
)
def test_a_bad_crm_lookup_is_refused_with_the_line(tmp_path: Path, call: str, problem: str) -> None:
    from engine.core.errors import FlowErrors
    from engine.flows import FlowRegistry

    (tmp_path / "bad.yaml").write_text(
        f"name: bad\nstart: a\nnodes:\n  a:\n    call: {call}\n    success: b\n    failure: b\n  b: {{say: hi, end: done}}\n"
    )
    with pytest.raises(FlowErrors) as info:
        FlowRegistry.from_dir(str(tmp_path))
    assert problem in str(info.value) and "bad.yaml:5" in str(info.value)


async def test_a_call_left_by_a_caller_that_died_is_made_by_another(
    redis_url: str, flows: Path, crm: StubCrm
) -> None:
    """A caller on another host read the job and died before answering: once the job has been
    pending longer than the stale time, a live caller takes it over and the flow goes on."""
    from engine.conversation.calls import Caller

    cfg = _cfg(redis_url, flows)
    async with Runtime(cfg, http=False, worker=False, senders=False, caller=False) as rt:
        await contacts.upsert(rt.store, rt.config.engine.shards, contacts.Contact(ANN), rt.clock.now_ms())
        await intake.enqueue_starts(rt, "lookup", [ANN], {"crm": crm.url})
        assert await process_stream(rt, ANN) == ["started"]
        jobs = keys.calls(shard(ANN))
        await rt.store.redis.xgroup_create(jobs, keys.CALLS_GROUP, id="0", mkstream=True)
        taken = await rt.store.redis.xreadgroup(keys.CALLS_GROUP, "gone-host-1-c-dead", {jobs: ">"})
        assert len(taken[0][1]) == 1  # in the dead caller's hands, never answered
        async with Caller(rt, stale_ms=300, reclaim_every=0.1):
            for _ in range(100):
                if await rt.store.redis.xlen(keys.inbound_stream(shard(ANN))) and crm.seen:
                    break
                await asyncio.sleep(0.05)
        assert crm.seen == [("/customers/+447700900123", "Bearer crm-token")]  # called once
        assert await process_stream(rt, ANN) == ["called"]  # the answer's turn: the flow went on
        state = await conversations.load_state(rt.store, rt.config.engine.shards, ANN)
        consumers = {c["name"] for c in await rt.store.redis.xinfo_consumers(jobs, keys.CALLS_GROUP)}
    assert state is not None and state["o"] == "told"
    assert b"gone-host-1-c-dead" not in consumers and "gone-host-1-c-dead" not in consumers
