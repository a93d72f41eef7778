"""The inbox through the HTTP API against a real engine (issue 19, human handoff): contacts handed
off by a flow or by an unmatched text are listed (cursor pages over every shard's index), read,
claimed (a second person gets 409), answered through the gate, closed or returned to a flow;
each step is an outcome event. Conversation-level behaviour is in tests/transcripts/handoff_*.txt."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.app.runtime import Runtime
from engine.conversation import conversations, inbox, intake
from engine.core import keys
from engine.core.clock import FakeClock
from engine.core.store import Store
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import API_KEY, ROOT, eventually, make_config

pytestmark = pytest.mark.redis_modes

ANN, RAJ, LEE = "+447700900123", "+447700900456", "+447700900789"


@pytest.fixture
async def engine(redis_url: str, carrier: SimulatedCarrier, clock: FakeClock) -> AsyncIterator[Runtime]:
    """A running engine with the test flows (``support`` hands off) and ``engine.unmatched: inbox``."""
    cfg = make_config(
        redis_url,
        engine={"flows_dir": str(ROOT / "tests/transcripts/flows"), "unmatched": "inbox"},
        gateways={"carrier": {"type": "http", "url": carrier.url, "sender": "12345"}},
    )
    async with Runtime(cfg, clock=clock) as runtime:
        yield runtime


@pytest.fixture
async def api(engine: Runtime) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        f"http://127.0.0.1:{engine.http_port}", headers={"Authorization": f"Bearer {API_KEY}"}
    ) as session:
        yield session


async def text(api: aiohttp.ClientSession, sender: str, body: str, pid: str) -> None:
    async with api.post(
        "/v1/inbound/carrier", json={"from": sender, "to": "12345", "text": body, "id": pid}
    ) as r:
        assert r.status == 202, await r.text()


async def call(api: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with api.request(method, path, json=body) as r:
        return r.status, await r.json()


async def in_inbox(api: aiohttp.ClientSession, number: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        status, body = await call(api, "GET", f"/v1/inbox/{number}")
        return body if status == 200 else None

    found: dict[str, Any] = await eventually(probe)
    return found


async def gone(api: aiohttp.ClientSession, number: str) -> None:
    async def probe() -> bool:
        status, _ = await call(api, "GET", f"/v1/inbox/{number}")
        return status == 404

    await eventually(probe)


async def hand_off(api: aiohttp.ClientSession, carrier: SimulatedCarrier, number: str, tag: str) -> None:
    """The support flow, answered "2": a person, please."""
    await text(api, number, "support", f"{tag}-1")
    assert (await carrier.next_message(number)).text.startswith("What do you need?")
    await text(api, number, "2", f"{tag}-2")
    assert (await carrier.next_message(number)).text.startswith("Putting you through to a person")
    await in_inbox(api, number)


async def inbox_steps(rt: Runtime, number: str) -> list[tuple[str, str | None]]:
    """(step, operator) of the contact's inbox outcome events, in order."""
    shard = keys.shard_of(number, rt.config.engine.shards)
    out = []
    for _, f in await rt.store.redis.xrange(keys.flow_events(shard)):
        e = orjson.loads(f[b"e"])
        if e["t"] == "inbox" and e["c"] == number:
            out.append((e["step"], e.get("by")))
    return out


async def test_handed_off_contact_is_claimed_answered_and_closed(
    engine: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier
) -> None:
    await hand_off(api, carrier, ANN, "a")
    await text(api, ANN, "my order never came", "a-3")
    seen = await in_inbox(api, ANN)
    assert (seen["status"], seen["reason"], seen["flow"], seen["consent"]) == (
        "open",
        "needs_person",
        "support",
        "unknown",
    )

    async def both_texts() -> dict[str, Any] | None:
        body = await in_inbox(api, ANN)
        return body if body["texts"] == 1 else None

    seen = await eventually(both_texts)
    assert [m["text"] for m in seen["messages"] if m["dir"] == "in"] == [
        "support",
        "2",
        "my order never came",
    ]

    assert await call(api, "POST", f"/v1/inbox/{ANN}:claim", {"operator": "alice"}) == (
        200, {"contact": ANN, "operator": "alice", "status": "claimed"},
    )  # fmt: skip
    assert (await call(api, "POST", f"/v1/inbox/{ANN}:claim", {"operator": "alice"}))[1][
        "status"
    ] == "already_yours"
    status, err = await call(api, "POST", f"/v1/inbox/{ANN}:claim", {"operator": "bob"})
    assert status == 409 and err["error"]["code"] == "claimed" and "alice" in err["error"]["message"]
    status, err = await call(api, "POST", f"/v1/inbox/{ANN}/replies", {"operator": "bob", "text": "Hi"})
    assert status == 409 and err["error"]["code"] == "claimed"

    status, sent = await call(
        api, "POST", f"/v1/inbox/{ANN}/replies", {"operator": "alice", "text": "Sent again!"}
    )
    assert status == 202
    got = await carrier.next_message(ANN)
    assert (got.text, got.id) == ("Sent again!", sent["message_id"])

    async def logged() -> dict[str, Any] | None:
        async with api.get("/v1/messages", params={"contact": ANN}) as r:
            msgs = (await r.json())["messages"]
        mine = [m for m in msgs if m["id"] == sent["message_id"]]
        return mine[0] if mine and mine[0]["status"] == "sent" else None

    record = await eventually(logged)
    assert record["operator"] == "alice" and record["text"] == "Sent again!"

    assert (await call(api, "POST", f"/v1/inbox/{ANN}:close", {"operator": "alice"}))[0] == 202
    await gone(api, ANN)
    assert await inbox_steps(engine, ANN) == [
        ("handed_off", None), ("text", None), ("claimed", "alice"), ("replied", "alice"), ("closed", "alice"),
    ]  # fmt: skip
    # Out of the inbox, the customer's texts are a flow's again.
    await text(api, ANN, "support", "a-4")
    assert (await carrier.next_message(ANN)).text.startswith("What do you need?")


async def test_stop_while_handed_off_wins_and_a_reply_is_refused_with_the_reason(
    engine: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier
) -> None:
    await hand_off(api, carrier, RAJ, "r")
    await text(api, RAJ, "STOP", "r-3")
    assert (await carrier.next_message(RAJ)).text.startswith("You are unsubscribed")
    seen = await eventually(lambda: _consent_is(api, RAJ, "opted_out"))
    assert seen["status"] == "open"  # still in the inbox, where a person sees why
    status, err = await call(api, "POST", f"/v1/inbox/{RAJ}/replies", {"operator": "alice", "text": "Hello?"})
    assert (status, err["error"]["code"]) == (409, "opted_out")
    # Raced past the API's check (queued before the STOP was applied), the gate in the commit
    # still refuses it: kept with status blocked and the reason, never sent.
    entry = await inbox.enqueue(engine, RAJ, "reply", "alice", text="Hello again?")
    mid = inbox.reply_id(keys.shard_of(RAJ, engine.config.engine.shards), entry)

    async def blocked() -> dict[str, Any] | None:
        async with api.get("/v1/messages", params={"contact": RAJ}) as r:
            msgs = (await r.json())["messages"]
        return next((m for m in msgs if m["id"] == mid), None)

    record = await eventually(blocked)
    assert (record["status"], record["error"]) == ("blocked", "opted out")
    shard = keys.shard_of(RAJ, engine.config.engine.shards)
    told = [orjson.loads(f[b"e"]) for _, f in await engine.store.redis.xrange(keys.flow_events(shard))]
    assert {"t": "message", "m": mid, "status": "blocked", "error": "opted_out"}.items() <= next(
        e for e in told if e.get("m") == mid and e["t"] == "message"
    ).items()  # the CRM hears of the refusal too
    assert (await in_inbox(api, RAJ))["last_reply_at"] is None  # nothing reached the customer
    assert [m.text for m in carrier.received if m.to == RAJ][-1].startswith("You are unsubscribed")


async def _consent_is(api: aiohttp.ClientSession, number: str, status: str) -> dict[str, Any] | None:
    code, body = await call(api, "GET", f"/v1/inbox/{number}")
    return body if code == 200 and body["consent"] == status else None


async def test_return_to_a_flow_starts_it_and_a_start_is_skipped_while_handed_off(
    engine: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier
) -> None:
    await hand_off(api, carrier, LEE, "l")
    await api.put(f"/v1/contacts/{LEE}", json={"fields": {}})
    async with api.post("/v1/flows/support/start", json={"contacts": [LEE]}) as r:
        assert r.status == 202
    shard = keys.shard_of(LEE, engine.config.engine.shards)

    async def skipped() -> bool:
        for _, f in await engine.store.redis.xrange(keys.flow_events(shard)):
            e = orjson.loads(f[b"e"])
            if e["t"] == "skipped" and e["c"] == LEE:
                return e["reason"] == "handed_off"
        return False

    await eventually(skipped)
    status, err = await call(api, "POST", f"/v1/inbox/{LEE}:return", {"operator": "dee", "flow": "nope"})
    assert status == 422 and err["error"]["message"].startswith("flow: no flow 'nope'")
    assert (await call(api, "POST", f"/v1/inbox/{LEE}:return", {"operator": "dee", "flow": "support"}))[
        0
    ] == 202
    assert (await carrier.next_message(LEE)).text.startswith("What do you need?")
    await gone(api, LEE)
    await text(api, LEE, "1", "l-3")
    assert (await carrier.next_message(LEE)).text == "We are open 9 to 5, Monday to Friday."
    assert [s for s, _ in await inbox_steps(engine, LEE)] == ["handed_off", "returned"]


BAD = [
    ("claim", "POST", "/v1/inbox/{n}:claim", {}, "operator: must be an operator's name"),
    ("claim blank", "POST", "/v1/inbox/{n}:claim", {"operator": ""}, "operator: must be an operator's name"),
    ("claim number", "POST", "/v1/inbox/{n}:claim", {"operator": 7}, "operator: "),
    ("reply no text", "POST", "/v1/inbox/{n}/replies", {"operator": "a"}, "text: must be text"),
    ("reply empty", "POST", "/v1/inbox/{n}/replies", {"operator": "a", "text": ""}, "text: must be text"),
    ("reply extra", "POST", "/v1/inbox/{n}/replies", {"operator": "a", "text": "x", "to": "y"}, "to: unknown field"),
    ("return no flow", "POST", "/v1/inbox/{n}:return", {"operator": "a"}, "flow: must name"),
    ("return bad flow", "POST", "/v1/inbox/{n}:return", {"operator": "a", "flow": "Bad Flow"}, "flow: must name"),
    ("return _start", "POST", "/v1/inbox/{n}:return", {"operator": "a", "flow": "support", "params": {"_start": 1}}, "params: must be an object"),
    ("close", "POST", "/v1/inbox/{n}:close", {"who": "a"}, "who: unknown field"),
    ("limit", "GET", "/v1/inbox?limit=0", None, "limit: must be a whole number"),
    ("cursor", "GET", "/v1/inbox?cursor=xyz", None, "cursor: not a cursor"),
    ("number", "GET", "/v1/inbox/not-a-number", None, "number: "),
]  # fmt: skip


@pytest.mark.parametrize(("label", "method", "path", "body", "says"), BAD, ids=[b[0] for b in BAD])
async def test_bad_requests_get_422_naming_the_field(
    api: aiohttp.ClientSession, label: str, method: str, path: str, body: Any, says: str
) -> None:
    status, err = await call(api, method, path.format(n=ANN), body)
    assert status == 422, (label, err)
    assert err["error"]["message"].startswith(says), err


async def test_a_contact_not_in_the_inbox_is_404(api: aiohttp.ClientSession) -> None:
    for path, body in (
        (f"/v1/inbox/{ANN}:claim", {"operator": "a"}),
        (f"/v1/inbox/{ANN}/replies", {"operator": "a", "text": "hi"}),
        (f"/v1/inbox/{ANN}:close", {"operator": "a"}),
    ):
        status, err = await call(api, "POST", path, body)
        assert (status, err["error"]["code"]) == (404, "not_in_inbox"), path


async def test_pages_cover_every_shard_once_in_order(
    engine: Runtime, api: aiohttp.ClientSession, clock: FakeClock
) -> None:
    numbers = [f"+4477009001{i:02d}" for i in range(9)]
    for i, n in enumerate(numbers):
        if i % 3 == 0:
            clock.advance(1)  # three contacts handed off in each millisecond: ties by number
        await text(api, n, "hello?", f"p-{i}")
    await eventually(lambda: _count(api, len(numbers)))
    seen: list[tuple[str, str]] = []
    cursor = None
    for _ in range(10):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        async with api.get("/v1/inbox", params=params) as r:
            page = await r.json()
        assert len(page["items"]) <= 2
        seen += [(i["handed_off_at"], i["contact"]) for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # Oldest first, ties (a millisecond's) by number; every contact once.
    assert seen == sorted(seen) and sorted(n for _, n in seen) == numbers
    assert len({at for at, _ in seen}) < len(numbers)  # there were ties to order
    assert all(i["reason"] == "unmatched" and i["flow"] is None for i in page["items"])


async def _count(api: aiohttp.ClientSession, n: int) -> bool:
    async with api.get("/v1/inbox", params={"limit": "100"}) as r:
        return len((await r.json())["items"]) == n


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    entries=st.dictionaries(
        st.integers(0, 99_999).map(lambda i: f"+447700{i:06d}"), st.integers(0, 5), max_size=30
    ),
    limit=st.integers(1, 7),
)
def test_paging_the_merged_index_yields_each_contact_once_in_order(
    redis_server: str, entries: dict[str, int], limit: int
) -> None:
    """Whatever the ties and the shards, pages of any size give every entry once, in order."""

    async def run() -> None:
        cfg = make_config(redis_server)
        store = Store.connect(redis_server, cfg.redis)
        try:
            r, shards = store.redis, cfg.engine.shards
            await r.flushdb()
            for n, at in entries.items():
                s = keys.shard_of(n, shards)
                await r.zadd(keys.inbox(s), {n: at})
                await r.hset(keys.handoff(n, s), mapping={"st": "open", "at": at, "why": "x", "f": ""})
            got: list[tuple[int, str]] = []
            after = None
            for _ in range(len(entries) + 2):
                items, after = await inbox.page(store, shards, limit, after)
                assert len(items) <= limit
                got += [(h.at, h.number) for h in items]
                if after is None:
                    break
            assert got == sorted((at, n) for n, at in entries.items())
        finally:
            await store.close()

    asyncio.run(run())


async def test_erasing_a_contact_takes_it_out_of_the_inbox(
    engine: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier
) -> None:
    await text(api, RAJ, "is anyone there?", "e-1")
    await in_inbox(api, RAJ)
    async with api.delete(f"/v1/contacts/{RAJ}") as r:
        assert r.status in (200, 204), await r.text()
    await gone(api, RAJ)
    async with api.get("/v1/inbox") as r:
        assert RAJ not in [i["contact"] for i in (await r.json())["items"]]


async def test_a_reply_passes_the_caps_and_quiet_hours_of_the_gate(
    redis_url: str, carrier: SimulatedCarrier
) -> None:
    """Where replies are not exempt (governance.exempt_replies and quiet_allows_replies off), a
    person's reply waits for the sending window, keeping its id, and counts towards the caps."""
    clock = FakeClock(1_767_304_800_000)  # 2026-01-01T22:00:00Z: outside 08:00-21:00
    cfg = make_config(
        redis_url,
        engine={"flows_dir": str(ROOT / "tests/transcripts/flows"), "unmatched": "inbox"},
        governance={
            "send_window": "08:00-21:00", "quiet_allows_replies": False, "quiet_jitter": "0s",
            "exempt_replies": False, "caps": ["1 per 1d"],
        },
        gateways={"carrier": {"type": "http", "url": carrier.url, "sender": "12345"}},
    )  # fmt: skip
    async with Runtime(cfg, clock=clock) as rt:
        await intake.accept_inbound(
            rt, gateway="carrier", contact=ANN, to="12345", text="hi?", provider_id="q1"
        )
        await eventually(lambda: inbox.load(rt.store, rt.config.engine.shards, ANN))
        entry = await inbox.enqueue(rt, ANN, "reply", "alice", text="Good morning!")
        mid = inbox.reply_id(keys.shard_of(ANN, rt.config.engine.shards), entry)
        shard = keys.shard_of(ANN, rt.config.engine.shards)
        await eventually(lambda: rt.store.redis.zcard(keys.timers(shard)))  # deferred, as a timer
        assert [m for m in carrier.received if m.to == ANN] == []
        clock.advance(10.5 * 3600)  # 08:30 the next morning
        got = await carrier.next_message(ANN)
        assert (got.text, got.id) == ("Good morning!", mid)
        second = await inbox.enqueue(rt, ANN, "reply", "alice", text="Anything else?")
        mid2 = inbox.reply_id(shard, second)

        async def capped() -> dict[str, Any] | None:
            msgs = await conversations.recent_messages(rt.store, rt.config.engine.shards, ANN, 50)
            return next((m for m in msgs if m["id"] == mid2), None)

        record = await eventually(capped)
        assert (record["status"], record["error"]) == ("blocked", "capped: 1 per 1d")
