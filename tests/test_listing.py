"""Listing and searching: contacts (conditions on fields, tags, consent, created / updated since,
saved segments) a page at a time and exported whole, flows, journey starts, a contact's messages;
the per-shard listing index kept in step by every write, stable pages while contacts are added."""

from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any

import aiohttp
import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.app.runtime import Runtime
from engine.core import contacts, keys
from engine.core.clock import FakeClock
from engine.core.config import RedisConfig
from engine.core.scripts.commit import CommitArgs, ContactChange
from engine.core.store import Store
from engine.crm import erasure, index, listing
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import ANN, SHARDS, redis_client, run_parley, sync_redis_client

pytestmark = pytest.mark.redis_modes


def number(i: int) -> str:
    return f"+4477009{i:05d}"


async def put(api: aiohttp.ClientSession, n: str, **body: Any) -> None:
    async with api.put(f"/v1/contacts/{n}", json=body) as r:
        assert r.status in (200, 201), await r.text()


async def get(api: aiohttp.ClientSession, path: str, expect: int = 200, **params: str) -> Any:
    async with api.get(path, params=params) as r:
        got = await r.json()
        assert r.status == expect, got
        return got


async def listed(api: aiohttp.ClientSession, **params: str) -> list[str]:
    """Every number the listing gives, following next_cursor to the end."""
    out: list[str] = []
    cursor = None
    while True:
        page = await get(api, "/v1/contacts", **params, **({"cursor": cursor} if cursor else {}))
        out += [c["number"] for c in page["contacts"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return out


async def test_contacts_are_found_by_fields_tags_consent_and_time(
    rt: Runtime, api: aiohttp.ClientSession, clock: FakeClock
) -> None:
    for i in range(12):
        tags = ["vip"] if i % 3 == 0 else []
        tags += ["news"] if i % 2 == 0 else []
        await put(api, number(i), fields={"city": "Leeds" if i < 6 else "York", "orders": i}, tags=tags)
        clock.advance(1)
    async with api.put(
        f"/v1/contacts/{number(4)}/consent", json={"status": "opted_out", "source": "web"}
    ) as r:
        assert r.status == 200
    async with api.put(
        f"/v1/contacts/{number(5)}/consent", json={"status": "opted_in", "source": "web"}
    ) as r:
        assert r.status == 200

    assert await listed(api, limit="5") == [number(i) for i in range(12)]  # oldest first, every one
    leeds = '[{"field": "contact.city", "equals": "leeds"}, {"field": "contact.orders", "gte": 2}]'
    assert await listed(api, where=leeds, limit="2") == [number(i) for i in (2, 3, 4, 5)]
    assert await listed(api, tags="vip,news") == [number(0), number(6)]
    assert await listed(api, consent="opted_out") == [number(4)]
    assert await listed(api, consent="opted_in") == [number(5)]
    assert len(await listed(api, consent="unknown")) == 10
    since = (await get(api, f"/v1/contacts/{number(9)}"))["created_at"]
    assert await listed(api, created_since=since) == [number(i) for i in (9, 10, 11)]

    clock.advance(60)
    await put(api, number(1), fields={"city": "Hull"}, tags=["vip"])  # changed: moves to the feed's end
    changed = (await get(api, f"/v1/contacts/{number(1)}"))["updated_at"]
    assert await listed(api, updated_since=changed) == [number(1)]
    assert await listed(api, tags="vip") == [number(i) for i in (0, 1, 3, 6, 9)]
    assert number(1) not in await listed(api, where='[{"field": "contact.city", "equals": "Leeds"}]')

    async with api.delete(f"/v1/contacts/{number(0)}") as r:
        assert r.status == 204
    assert number(0) not in await listed(api)
    assert await listed(api, tags="vip,news") == [number(6)]


async def test_an_opt_out_by_text_is_found_by_consent(
    rt: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier
) -> None:
    await put(api, ANN, fields={"first_name": "Ann"})
    async with api.post(
        "/v1/inbound/carrier", json={"from": ANN, "to": "12345", "text": "STOP", "id": "s1"}
    ) as r:
        assert r.status == 202, await r.text()
    await carrier.next_message(ANN)  # the opt-out confirmation: the turn committed
    assert await listed(api, consent="opted_out") == [ANN]
    assert await listed(api, consent="unknown") == []


BAD_QUERIES = [
    ("where", {"where": "{not json"}),
    ("where", {"where": '{"field": "contact.city"}'}),
    ("where[0].field", {"where": '[{"field": "results.x", "equals": 1}]'}),
    ("where[0]", {"where": '[{"field": "contact.x", "bigger": 1}]'}),
    ("tags", {"tags": "no spaces"}),
    ("consent", {"consent": "maybe"}),
    ("created_since", {"created_since": "yesterday"}),
    ("updated_since", {"updated_since": "2026-13-45"}),
    ("limit", {"limit": "0"}),
    ("limit", {"limit": "many"}),
    ("cursor", {"cursor": "not-a-cursor"}),
    ("segment", {"segment": "no such name"}),
]


@pytest.mark.parametrize(
    ("param", "query"), BAD_QUERIES, ids=[q[0] + str(i) for i, q in enumerate(BAD_QUERIES)]
)
async def test_a_bad_query_parameter_is_a_422_naming_it(
    rt: Runtime, api: aiohttp.ClientSession, param: str, query: dict[str, str]
) -> None:
    for path in ("/v1/contacts", "/v1/contacts:export"):
        if path.endswith("export") and param in ("limit", "cursor"):
            continue
        got = await get(api, path, 422, **query)
        assert got["error"]["message"].startswith(f"{param}: "), got


async def test_a_cursor_for_the_created_order_is_refused_by_a_changes_feed(
    rt: Runtime, api: aiohttp.ClientSession
) -> None:
    for i in range(3):
        await put(api, number(i))
    cursor = (await get(api, "/v1/contacts", limit="1"))["next_cursor"]
    got = await get(api, "/v1/contacts", 422, cursor=cursor, updated_since="2000-01-01T00:00:00Z")
    assert got["error"]["message"].startswith("cursor: ")


async def test_segments_are_saved_listed_used_and_deleted(
    rt: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier
) -> None:
    for i in range(6):
        await put(api, number(i), fields={"first_name": f"C{i}", "city": "Leeds" if i % 2 else "York"},
                  tags=["vip"] if i < 4 else [])  # fmt: skip
    body = {"where": [{"field": "contact.city", "equals": "Leeds"}], "tags": ["vip"]}
    async with api.put("/v1/segments/leeds-vip", json=body) as r:
        assert r.status == 201, await r.text()
        assert (await r.json())["where"] == body["where"]
    async with api.put("/v1/segments/leeds-vip", json={**body, "consent": "unknown"}) as r:
        assert r.status == 200
    assert [s["name"] for s in (await get(api, "/v1/segments"))["segments"]] == ["leeds-vip"]
    assert (await get(api, "/v1/segments/leeds-vip"))["consent"] == "unknown"

    assert await listed(api, segment="leeds-vip") == [number(1), number(3)]
    assert await listed(
        api, segment="leeds-vip", where='[{"field": "contact.first_name", "equals": "C3"}]'
    ) == [number(3)]
    async with api.get("/v1/contacts:export", params={"segment": "leeds-vip"}) as r:
        assert [orjson.loads(x)["number"] for x in (await r.read()).splitlines()] == [number(1), number(3)]

    async with api.post("/v1/flows/nps/start", json={"segment": "leeds-vip"}) as r:
        started = await r.json()
        assert r.status == 202, started
    assert started["requested"] == 2
    for n in (number(1), number(3)):
        await carrier.next_message(n)
    assert {m.to for m in carrier.received} == {number(1), number(3)}

    async with api.post("/v1/flows/nps/start", json={"segment": "nobody"}) as r:
        assert r.status == 404 and (await r.json())["error"]["message"].startswith("segment: ")
    for path in ("/v1/contacts", "/v1/contacts:export"):
        got = await get(api, path, 404, segment="nobody")
        assert got["error"]["code"] == "segment_not_found" and got["error"]["message"].startswith("segment: ")
    async with api.post("/v1/flows/nps/start", json={"segment": "leeds-vip", "contacts": [ANN]}) as r:
        assert r.status == 422
    async with api.put("/v1/segments/bad", json={"where": [{"field": "contact.x", "near": 1}]}) as r:
        assert r.status == 422 and (await r.json())["error"]["message"].startswith("where[0]")
    async with api.put("/v1/segments/bad name", json={}) as r:
        assert r.status == 422
    async with api.delete("/v1/segments/leeds-vip") as r:
        assert r.status == 204
    async with api.delete("/v1/segments/leeds-vip") as r:
        assert r.status == 404
    await get(api, "/v1/segments/leeds-vip", 404)


async def test_an_export_streams_every_contact_in_bounded_memory(
    rt: Runtime, api: aiohttp.ClientSession
) -> None:
    total = 8_000
    batch = [
        contacts.Contact(
            number(i), {"first_name": f"Name{i}", "note": "x" * 600}, tags=["t"] if i % 2 else []
        )
        for i in range(total)
    ]
    for i in range(0, total, 2000):
        await contacts.upsert_many(
            rt.store, rt.config.engine.shards, batch[i : i + 2000], 1_767_225_600_000 + i
        )
    del batch
    seen = bytearray(total)  # a mark per contact: the client holds next to nothing itself
    size = 0
    tracemalloc.start()
    try:
        async with api.get("/v1/contacts:export", params={"format": "jsonl"}) as r:
            assert r.headers["Content-Type"] == "application/x-ndjson"
            rest = b""
            async for chunk in r.content.iter_chunked(64 * 1024):
                size += len(chunk)
                *lines, rest = (rest + chunk).split(b"\n")
                for line in lines:
                    seen[int(orjson.loads(line)["number"][-5:])] += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert set(seen) == {1} and rest == b""  # every contact, once
    # The whole export is over 6 MB; server and client together (one process, one loop: what
    # the client has not read yet counts too) never held half of it at once.
    assert size > 6_000_000 and peak < size / 2, (size, peak)

    async with api.get("/v1/contacts:export", params={"format": "csv", "tags": "t"}) as r:
        rows = (await r.text()).splitlines()
    assert rows[0] == "number,language,timezone,tags,consent,created_at,updated_at,fields"
    assert len(rows) == 1 + total // 2 and rows[1].startswith(f"{number(1)},,,t,unknown,")


async def test_flows_are_listed_by_name_a_page_at_a_time(rt: Runtime, api: aiohttp.ClientSession) -> None:
    names: list[str] = []
    cursor = None
    while True:
        page = await get(api, "/v1/flows", limit="3", **({"cursor": cursor} if cursor else {}))
        names += [f["name"] for f in page["flows"]]
        assert all(f["status"] == "valid" and f["file"] == "unchanged" for f in page["flows"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert names == sorted(rt.flows.flows)
    nps = (await get(api, "/v1/flows", name="nps"))["flows"]
    assert [(f["name"], f["digest"]) for f in nps] == [("nps", rt.flows.flows["nps"].digest)]
    assert (await get(api, "/v1/flows", 422, cursor="zz"))["error"]["message"].startswith("cursor: ")


async def test_starts_are_listed_newest_first_by_flow_and_status(
    rt: Runtime, api: aiohttp.ClientSession, clock: FakeClock
) -> None:
    for i in range(4):
        await put(api, number(i), fields={"first_name": "A", "name": "A"})
    ids = []
    for i, (flow, send_at) in enumerate([("nps", None), ("csat", None), ("nps", "2099-01-01T10:00:00Z")]):
        body: dict[str, Any] = {"contacts": [number(i)], **({"send_at": send_at} if send_at else {})}
        async with api.post(f"/v1/flows/{flow}/start", json=body) as r:
            assert r.status == 202, await r.text()
            ids.append((await r.json())["start"])
        clock.advance(1)
    every = []
    cursor = None
    while True:
        page = await get(api, "/v1/starts", limit="2", **({"cursor": cursor} if cursor else {}))
        every += [s["start"] for s in page["starts"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert every == ids[::-1]
    nps = (await get(api, "/v1/starts", flow="nps"))["starts"]
    assert [s["start"] for s in nps] == [ids[2], ids[0]]
    assert [s["start"] for s in (await get(api, "/v1/starts", status="scheduled"))["starts"]] == [ids[2]]
    assert (await get(api, "/v1/starts", 422, status="gone"))["error"]["message"].startswith("status: ")


async def test_a_contacts_messages_by_status_a_page_at_a_time(
    rt: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier
) -> None:
    await put(api, ANN, fields={"first_name": "Ann"})
    async with api.post("/v1/flows/nps/start", json={"contacts": [ANN]}) as r:
        assert r.status == 202
    await carrier.next_message(ANN)
    async with api.post(
        "/v1/inbound/carrier", json={"from": ANN, "to": "12345", "text": "9", "id": "p1"}
    ) as r:
        assert r.status == 202
    await carrier.next_message(ANN)

    whole = await get(api, "/v1/messages", contact=ANN)
    assert len(whole["messages"]) == 3 and whole["next_cursor"] is None  # the answer it always gave
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = await get(
            api, "/v1/messages", contact=ANN, limit="2", **({"cursor": cursor} if cursor else {})
        )
        pages.append([m["id"] for m in page["messages"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    ids = [m["id"] for m in whole["messages"]]
    assert pages == [ids[1:], ids[:1]]  # newest first, each page oldest first
    received = await get(api, "/v1/messages", contact=ANN, status="received")
    assert [m["dir"] for m in received["messages"]] == ["in"]
    at = {m["id"]: m["at"] for m in whole["messages"]}  # ISO 8601 UTC, ms: ordered as text
    after = at[received["messages"][0]["id"]]
    since = (await get(api, "/v1/messages", contact=ANN, since=after))["messages"]
    until = (await get(api, "/v1/messages", contact=ANN, until=after))["messages"]
    assert [m["id"] for m in since] == [i for i in ids if at[i] >= after]
    assert [m["id"] for m in until] == [i for i in ids if at[i] < after]
    assert len(since) + len(until) == 3 and since
    for param, value in (("cursor", "x"), ("since", "soon"), ("status", "Bad!")):
        got = await get(api, "/v1/messages", 422, contact=ANN, **{param: value})
        assert got["error"]["message"].startswith(f"{param}: ")


async def test_reindex_puts_contacts_written_before_the_index_in_it(
    rt: Runtime, api: aiohttp.ClientSession, redis_url: str
) -> None:
    for i in range(30):
        await put(api, number(i), tags=["a"] if i % 2 else [])
    async with api.put(
        f"/v1/contacts/{number(3)}/consent", json={"status": "opted_in", "source": "web"}
    ) as r:
        assert r.status == 200
    r = sync_redis_client(redis_url)
    before = {s: r.zrange(keys.contact_index(s), 0, -1) for s in range(SHARDS)}
    for s in range(SHARDS):
        r.delete(keys.contact_index(s))  # as an earlier release left them
    assert await listed(api) == []
    env = {"PARLEY_REDIS_URL": redis_url, "PARLEY_ENGINE_SHARDS": str(SHARDS)}
    done = await asyncio.to_thread(run_parley, "contacts", "reindex", env=env)
    assert done.returncode == 0 and "indexed 30 contacts" in done.stderr, done.stderr
    assert {s: r.zrange(keys.contact_index(s), 0, -1) for s in range(SHARDS)} == before
    assert await listed(api, consent="opted_in") == [number(3)]
    r.close()


# -- properties ---------------------------------------------------------------------------------


def expected_index(r: redis.Redis, numbers: list[str]) -> set[bytes]:
    """The index members the records say there should be (contact_index.lua's rule, restated)."""
    out: set[bytes] = set()
    for n in numbers:
        s = keys.shard_of(n, SHARDS)
        h = r.hgetall(keys.contact(n, s))
        if not h:
            continue
        ca, ua = index.stamp(int(h[b"ca"])), index.stamp(int(h[b"ua"]))
        out |= {f"c|{ca}|{n}".encode(), f"u|{ua}|{n}".encode()}
        cs = r.hget(keys.governance(n, s), "cs")
        if cs is not None and cs != b"unknown":
            out.add(f"g|{cs.decode()}|{ca}|{n}".encode())
        out |= {f"t|{t}|{ca}|{n}".encode() for t in orjson.loads(h.get(b"tg", b"[]"))}
    return out


NUMBERS = [number(i) for i in range(5)]
TAGS = st.lists(st.sampled_from(["a", "b", "vip"]), max_size=3, unique=True)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(NUMBERS), TAGS),
        st.tuples(st.just("consent"), st.sampled_from(NUMBERS), st.sampled_from(["opted_in", "opted_out"])),
        st.tuples(
            st.just("turn"), st.sampled_from(NUMBERS), TAGS, st.sampled_from(["", "opted_out", "opted_in"])
        ),
        st.tuples(st.just("erase"), st.sampled_from(NUMBERS)),
    ),
    min_size=1,
    max_size=12,
)


async def apply(store: Store, ops: list[tuple[Any, ...]]) -> None:
    now = 1_767_225_600_000
    for op in ops:
        now += 7
        n = op[1]
        s = keys.shard_of(n, SHARDS)
        if op[0] == "put":
            await contacts.upsert(store, SHARDS, contacts.Contact(n, {"x": 1}, tags=op[2]), now)
        elif op[0] == "consent":  # as PUT /v1/contacts/{number}/consent writes it
            async with store.redis.pipeline(transaction=True) as pipe:
                pipe.hset(keys.governance(n, s), mapping={"cs": op[2], "src": "web", "at": now})
                await index.execute_with_reindex(store, pipe, n, s)
        elif op[0] == "turn":  # a turn that sets tags (and maybe consent), as commit.lua is called
            ua = int(await store.redis.hget(keys.contact(n, s), "ua") or 0)
            v = (await store.redis.get(keys.session(n, s)) or b"0|").split(b"|")[0]
            call = CommitArgs(
                version=int(v), event=f"{s}/{now}-0", contact=n, shard=s,
                outbound_stream=keys.outbound_stream(s, "gw"), now_ms=now,
                contact_change=ContactChange(ua, "{}", orjson.dumps(op[2]).decode(), now),
                consent=f"{op[3]}|keyword|STOP" if op[3] else "",
            )  # fmt: skip
            res = await store.run("commit", call.to_keys(), call.to_argv())
            assert res[0] == b"ok", res
        else:
            await erasure.forget(store, n, shards=SHARDS, key="k", now_ms=now, source="api")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_the_index_always_says_what_the_records_say(redis_url: str, ops: list[tuple[Any, ...]]) -> None:
    """Whatever sequence of PUTs, consent changes, turns and erasures: the shards' indexes hold
    exactly the members the contacts and their consent call for."""

    async def run() -> None:
        store = Store(redis_client(redis_url), RedisConfig(url=redis_url, cluster=store_cluster(redis_url)))
        try:
            await flush(store)
            await apply(store, ops)
        finally:
            await store.close()

    asyncio.run(run())
    r = sync_redis_client(redis_url)
    held = {m for s in range(SHARDS) for m in r.zrange(keys.contact_index(s), 0, -1)}
    assert held == expected_index(r, NUMBERS)
    r.close()


def store_cluster(redis_url: str) -> bool:
    from tests.conftest import ClusterURL

    return isinstance(redis_url, ClusterURL)


async def flush(store: Store) -> None:
    if store.cluster:
        await store.redis.flushall()  # every master (the cluster client sends it to each)
    else:
        await store.redis.flushdb()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    first=st.integers(1, 40),
    limit=st.integers(1, 7),
    added=st.lists(st.integers(0, 3), min_size=1, max_size=12),
    ticks=st.lists(st.integers(0, 2), min_size=40, max_size=40),
    tag=st.booleans(),
)
def test_paging_while_contacts_are_added_skips_and_repeats_nobody(
    redis_url: str, first: int, limit: int, added: list[int], ticks: list[int], tag: bool
) -> None:
    """Contacts created at the same ms or not, pages of any size, new contacts (some at the very
    ms of the page just read) and updates between pages: every contact there at the start is
    listed exactly once, and no contact twice."""

    async def run() -> tuple[list[str], set[str]]:
        store = Store(redis_client(redis_url), RedisConfig(url=redis_url, cluster=store_cluster(redis_url)))
        try:
            await flush(store)
            now = 1_767_225_600_000
            for i in range(first):
                now += ticks[i]
                await contacts.upsert(store, SHARDS, contacts.Contact(number(i), tags=["t"]), now)
            there = {number(i) for i in range(first)}
            f = listing.ContactFilter(tags=("t",) if tag else ())
            seen: list[str] = []
            cursor = None
            fresh = 1000
            for step in range(1000):
                page = await listing.page(store, SHARDS, f, limit=limit, cursor=cursor)
                seen += [c.number for c, _ in page.contacts]
                if page.next_cursor is None:
                    return seen, there
                cursor = page.next_cursor
                for _ in range(added[step] if step < len(added) else 0):  # a writer between pages
                    fresh += 1  # at the same ms as the last ones, numbers before and after theirs
                    n = number(fresh) if fresh % 2 else f"+4477008{fresh:05d}"
                    await contacts.upsert(store, SHARDS, contacts.Contact(n, tags=["t"]), now)
                await contacts.upsert(
                    store, SHARDS, contacts.Contact(number(step % first), tags=["t"]), now + 1
                )
            raise AssertionError("the listing never ended")
        finally:
            await store.close()

    seen, there = asyncio.run(run())
    assert len(seen) == len(set(seen)), "a contact was listed twice"
    assert there <= set(seen), f"skipped: {sorted(there - set(seen))}"


async def test_concurrent_writers_while_paging_over_http(rt: Runtime, api: aiohttp.ClientSession) -> None:
    """The same over the API with a real concurrent writer task (not between pages: during)."""
    for i in range(200):
        await put(api, number(i))
    stop = asyncio.Event()

    async def writer() -> None:
        i = 1000
        while not stop.is_set():
            await put(api, number(i), tags=["new"])
            i += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(writer())
    try:
        seen = await listed(api, limit="7")
    finally:
        stop.set()
        await task
    assert len(seen) == len(set(seen))
    assert {number(i) for i in range(200)} <= set(seen)


async def test_a_page_examines_a_bounded_number_of_contacts(rt: Runtime) -> None:
    batch = [contacts.Contact(number(i), {"n": i}) for i in range(300)]
    await contacts.upsert_many(rt.store, SHARDS, batch, 1_767_225_600_000)
    f = listing.ContactFilter(conditions=listing_conditions('[{"field": "contact.n", "gte": 290}]'))
    page = await listing.page(rt.store, SHARDS, f, limit=50, max_examined=100)
    assert page.contacts == [] and page.next_cursor is not None  # nothing yet, and more to look at
    found = [c.number async for c, _ in listing.every(rt.store, SHARDS, f)]
    assert sorted(found) == [number(i) for i in range(290, 300)]


def listing_conditions(raw: str) -> tuple[Any, ...]:
    from engine.crm.segments import compile_where

    return compile_where(orjson.loads(raw), "where")
