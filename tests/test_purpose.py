"""Consent by purpose: service messages reach any contact who has not opted out; marketing
messages only a contact with a marketing opt-in newer than any opt-out. STOP stops both, STOP
PROMO (or a marketing opt-out through the API) stops offers alone."""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.app.runtime import Runtime
from engine.conversation import conversations, intake
from engine.core import contacts, keys
from engine.core.clock import FakeClock
from engine.core.errors import FlowErrors
from engine.flows import FlowRegistry
from engine.governance import consent as governance
from tests.conftest import ANN, make_config, outbound, process_stream, shard
from tests.test_commit_script import commit, queued, reply, turn

#: Each test that takes redis_url runs on one Redis and on a Redis Cluster (tests/conftest.py).
pytestmark = pytest.mark.redis_modes

OFFER = "Ann, for our text subscribers only"
PROMO_STOPPED = governance.Keywords().messages[governance.OPT_OUT_MARKETING]["en"]


class Phone:
    """Ann's side, run without a worker so each step is processed before the next."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.ids = itertools.count()
        self.seen = 0

    async def text(self, body: str) -> list[str]:
        await intake.accept_inbound(
            self.rt, gateway="carrier", contact=ANN, to="1", text=body, provider_id=f"p{next(self.ids)}"
        )
        return await self.replies()

    async def start(self, flow: str, params: dict[str, Any] | None = None) -> list[str]:
        await intake.enqueue_starts(self.rt, flow, [ANN], params or {}, interrupt=True)
        return await self.replies()

    async def api_consent(self, status: str, *, marketing: bool) -> None:
        """What ``PUT /v1/contacts/{n}/consent`` writes (engine/api/consent.py uses the same)."""
        fields, entry = governance.consent_change(
            status, "web", "form", self.rt.clock.now_ms(), marketing=marketing
        )
        s = shard(ANN)
        async with self.rt.store.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.governance(ANN, s), mapping=fields)  # type: ignore[arg-type]
            pipe.xadd(keys.consent_ledger(ANN, s), entry)  # type: ignore[arg-type]
            await pipe.execute()

    async def replies(self) -> list[str]:
        await process_stream(self.rt, ANN)
        out = await outbound(self.rt, "carrier")
        new = [f[b"t"].decode() for f in out[self.seen :] if f[b"c"].decode() == ANN]
        self.seen = len(out)
        return new


async def _phone(redis_url: str, **governance_cfg: Any) -> tuple[Runtime, Phone]:
    cfg = make_config(
        redis_url,
        gateways={"carrier": {"type": "http", "url": "http://127.0.0.1:9/"}},
        governance=governance_cfg,
    )
    rt = Runtime(cfg, clock=FakeClock(), worker=False, senders=False, http=False)
    await rt.__aenter__()
    await contacts.upsert(
        rt.store,
        rt.config.engine.shards,
        contacts.Contact(
            ANN, {"first_name": "Ann", "reference": "APP-5521", "appointment_at": "2026-01-03T10:00"}
        ),
        rt.clock.now_ms(),
    )
    return rt, Phone(rt)


async def test_stop_promo_stops_offers_and_keeps_service_messages(redis_url: str) -> None:
    rt, phone = await _phone(redis_url)
    try:
        assert await phone.start("flash_sale") == []  # no marketing opt-in yet: nothing
        await phone.api_consent("opted_in", marketing=True)
        (offer,) = await phone.start("flash_sale")
        assert offer.startswith(OFFER)
        assert await phone.text("STOP PROMO") == [PROMO_STOPPED]
        assert await phone.text("Yes") == []  # the offer's conversation ended: nothing to claim
        assert await phone.start("flash_sale") == []
        assert await phone.text("stop promo") == []  # once is enough
        (ref,) = await phone.start("reference")  # a service message still goes
        assert ref.startswith("Hi Ann, your application reference is APP-5521.")
        ledger = await rt.store.redis.xrange(keys.consent_ledger(ANN, shard(ANN)))
        assert [(e[b"cs"], e.get(b"purpose"), e[b"src"]) for _, e in ledger] == [
            (b"opted_in", b"marketing", b"web"),
            (b"opted_out", b"marketing", b"keyword"),
            (b"opted_out", b"marketing", b"keyword"),
        ]
    finally:
        await rt.__aexit__(None, None, None)


async def test_stop_withdraws_the_marketing_opt_in_and_start_does_not_restore_it(redis_url: str) -> None:
    rt, phone = await _phone(redis_url)
    try:
        await phone.api_consent("opted_in", marketing=True)
        assert len(await phone.start("flash_sale")) == 1
        assert len(await phone.text("STOP")) == 1
        assert await phone.start("flash_sale") == [] and await phone.start("reference") == []
        assert len(await phone.text("START")) == 1
        assert len(await phone.start("reference")) == 1  # service again
        assert await phone.start("flash_sale") == []  # marketing needs a new, explicit opt-in
        await phone.api_consent("opted_in", marketing=True)
        assert len(await phone.start("flash_sale")) == 1
    finally:
        await rt.__aexit__(None, None, None)


async def test_a_marketing_start_refused_is_an_outcome_event_and_a_gate_count(redis_url: str) -> None:
    rt, phone = await _phone(redis_url)
    try:
        await phone.start("flash_sale")
        events = [orjson.loads(e[b"e"]) for _, e in await rt.store.redis.xrange(keys.flow_events(shard(ANN)))]
        assert [(e["t"], e.get("reason"), e["f"]) for e in events] == [
            ("skipped", "no_marketing_consent", "flash_sale")
        ]
        from tests.test_processes import _samples

        gate = _samples(rt.metrics.render().decode())
        assert gate[("parley_gate_total", (("decision", "no_marketing_consent"),))] == 1
    finally:
        await rt.__aexit__(None, None, None)


async def test_a_service_flow_started_as_marketing_stays_marketing_and_is_capped(redis_url: str) -> None:
    """``appointment`` is service and says ``caps: []``; started as marketing (the journey
    narrows it), it needs the opt-in, its later messages too, and the global caps hold it."""
    rt, phone = await _phone(redis_url, caps=["1 per 1d"])
    narrowed = {"_start": {"id": "st-1", "purpose": "marketing"}}
    try:
        assert await phone.start("appointment", narrowed) == []
        await phone.api_consent("opted_in", marketing=True)
        assert len(await phone.start("appointment", narrowed)) == 1
        await phone.api_consent("opted_out", marketing=True)
        assert await phone.text("1") == []  # the run is marketing: its reply is held too
        records = (await rt.store.redis.hgetall(keys.message_records(ANN, shard(ANN)))).values()
        assert sum(b'"error":"no marketing consent"' in r for r in records) == 1
        await phone.api_consent("opted_in", marketing=True)
        assert await phone.start("appointment", narrowed) == []  # capped: 1 per 1d
        assert len(await phone.start("appointment")) == 1  # as service it is not
    finally:
        await rt.__aexit__(None, None, None)


async def test_the_commit_gate_refuses_marketing_without_the_opt_in(redis_url: str) -> None:
    """commit.lua itself (the last word, after any API change since the turn loaded)."""
    from engine.core.config import RedisConfig
    from engine.core.store import Store

    store = Store.connect(redis_url, RedisConfig())
    try:
        args = turn(0, "0/1-0", reply(1, "m"), reply(2, "n"), reply(3, "c"), reply(4, "s"))
        assert await commit(store, args) == [
            "ok",
            "1",
            "out-1 no_marketing_consent",
            "out-2 no_marketing_consent",
        ]
        assert await queued(store) == ["out-3", "out-4"]
        rec = orjson.loads(await store.redis.hget(keys.message_records(ANN, 0), "out-1"))
        assert (rec["status"], rec["error"]) == ("blocked", "no marketing consent")
        opt_in = turn(1, "0/2-0", reply(5, "m"), consent="marketing_opted_in|keyword|YES")
        assert await commit(store, opt_in) == ["ok", "2"]
        stop = turn(2, "0/3-0", reply(6, "m"), reply(7, "r"), consent="opted_out|keyword|STOP")
        assert await commit(store, stop) == ["ok", "3", "out-6 opted_out", "out-7 opted_out"]
        assert await store.redis.hget(keys.governance(ANN, 0), "mk") == b"opted_out"
    finally:
        await store.close()


#: What can happen to a contact: consent changes by text and through the API, and sends.
OPS = st.lists(
    st.sampled_from(
        ["STOP", "START", "STOP PROMO", "@mk_in", "@mk_out", "@all_in", "@all_out", "@offer", "@service"]
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=30, deadline=None)
@given(ops=OPS)
def test_marketing_needs_an_opt_in_newer_than_any_opt_out(redis_server: str, ops: list[str]) -> None:
    """Over any sequence of opt-ins and opt-outs (by text, through the API, for marketing or for
    all) and sends: a marketing message reaches the contact exactly when a marketing opt-in is
    newer than every opt-out and the last word on all messages is not STOP; a service message
    exactly when it is not STOP: a marketing opt-out never blocks it."""

    async def run() -> None:
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(redis_server)
        await r.flushdb()
        await r.aclose()
        rt, phone = await _phone(redis_server)
        try:
            clock = rt.clock
            assert isinstance(clock, FakeClock)
            stopped = False  # the last change for all messages was an opt-out
            last_out = last_mk_in = -1  # step of the last opt-out (any purpose), marketing opt-in
            for step, op in enumerate(ops):
                clock.advance(1)
                if op in ("STOP", "@all_out"):
                    stopped, last_out = True, step
                elif op in ("START", "@all_in"):
                    stopped = False
                elif op in ("STOP PROMO", "@mk_out"):
                    last_out = step
                elif op == "@mk_in":
                    last_mk_in = step
                if op.startswith("@") and op.endswith(("_in", "_out")):
                    await phone.api_consent(
                        "opted_in" if op.endswith("_in") else "opted_out", marketing=op.startswith("@mk")
                    )
                elif op == "@offer":
                    got = await phone.start("flash_sale")
                    allowed = not stopped and last_mk_in > last_out
                    assert [m.startswith(OFFER) for m in got] == ([True] if allowed else []), (ops, step)
                elif op == "@service":
                    got = await phone.start("reference")
                    assert len(got) == (0 if stopped else 1), (ops, step)
                else:
                    await phone.text(op)
        finally:
            await rt.__aexit__(None, None, None)

    asyncio.run(run())


@pytest.mark.parametrize(
    ("header", "problem", "line"),
    [
        ("purpose: promo\n", "purpose must be service or marketing, got 'promo'", 2),
        ("purpose: marketing\ncaps: []\n", "caps: [] is for service flows", 3),
        ("triggers: ['order * now']\n", "* only as its own last word", 2),
    ],
)
def test_a_bad_purpose_is_refused_with_its_line(tmp_path: Path, header: str, problem: str, line: int) -> None:
    (tmp_path / "promo.yaml").write_text(
        f"name: promo\n{header}start: a\nnodes:\n  a: {{say: Hi, end: sent}}\n"
    )
    with pytest.raises(FlowErrors) as exc:
        FlowRegistry.from_dir(str(tmp_path))
    assert any(f"promo.yaml:{line}" in str(e) and problem in str(e) for e in exc.value.errors), exc.value


@functools.cache
def _shipped() -> FlowRegistry:
    return FlowRegistry.from_dir(str(Path(__file__).parent.parent / "rules"))


def test_old_flows_are_service_and_the_flash_sale_is_marketing() -> None:
    flows = _shipped().flows
    assert flows["flash_sale"].purpose == "marketing"
    assert {f.purpose for n, f in flows.items() if n != "flash_sale"} == {"service"}
    assert flows["appointment"].caps == []  # still valid: a service flow may say no caps


async def test_the_api_records_marketing_consent_and_starts_only_narrower(
    rt: Runtime, api: Any, carrier: Any, turns: Any
) -> None:
    await contacts.upsert(rt.store, rt.config.engine.shards, contacts.Contact(ANN, {"first_name": "Ann"}), 1)
    url = f"/v1/contacts/{ANN}/consent"
    async with api.put(url, json={"status": "opted_in", "source": "web", "purpose": "offers"}) as r:
        assert r.status == 422 and (await r.json())["error"]["message"].startswith("purpose:")
    async with api.post("/v1/flows/flash_sale/start", json={"contacts": [ANN], "purpose": "service"}) as r:
        assert r.status == 422 and (await r.json())["error"]["message"].startswith("purpose:")
    async with api.post("/v1/flows/flash_sale/start", json={"contacts": [ANN]}) as r:
        body = await r.json()
    done = await turns.wait(body["started"][0]["event_id"])
    assert done.result == "skipped_no_marketing_consent"
    async with api.get(f"/v1/starts/{body['start']}") as r:
        assert (await r.json())["turns"]["skipped"] == {"no_marketing_consent": 1}
    note = {"status": "opted_in", "source": "web", "purpose": "marketing", "note": "offers box ticked"}
    async with api.put(url, json=note) as r:
        view = await r.json()
    assert (view["status"], view["marketing"], view["marketing_source"]) == ("unknown", "opted_in", "web")
    assert view["ledger"][-1]["purpose"] == "marketing" and view["ledger"][-1]["cause"] == "offers box ticked"
    async with api.post("/v1/flows/flash_sale/start", json={"contacts": [ANN]}) as r:
        body = await r.json()
    assert (await turns.wait(body["started"][0]["event_id"])).result == "started"
    assert (await carrier.next_message(ANN)).text.startswith(OFFER)
    async with api.put(url, json={"status": "opted_out", "source": "paper"}) as r:
        view = await r.json()
    assert (view["status"], view["marketing"]) == ("opted_out", "opted_out")  # STOP stops both


async def test_the_marketing_consent_example_in_api_md_runs_as_written(rt: Runtime, tmp_path: Path) -> None:
    import re
    import shutil

    from tests.conftest import API_KEY, ROOT
    from tests.test_walkthrough import bash

    if shutil.which("curl") is None:
        pytest.skip("needs curl")
    (example,) = [
        b
        for b in re.findall(r"```sh\n(.*?)```", (ROOT / "docs/api.md").read_text(), re.S)
        if '"marketing"' in b and "/consent" in b
    ]
    env = {"PATH": os.environ["PATH"], "PARLEY": f"http://127.0.0.1:{rt.http_port}", "KEY": API_KEY}
    view = orjson.loads(await bash(example, env, tmp_path))
    assert (view["marketing"], view["marketing_source"]) == ("opted_in", "web")
    assert view["ledger"][-1] | {"at": None} == {
        "at": None, "change": "opted_in", "source": "web", "cause": "offers box ticked", "event": None,
        "purpose": "marketing",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "language"),
    [("STOP PROMO", "en"), ("Stop promos!", "en"), ("no offers", "en"), ("Keine Werbung", "de"),
     ("baja promo", "es"), ("arrêt pub", "fr"), ("sem ofertas", "pt")],
)  # fmt: skip
def test_marketing_opt_out_keywords_are_whole_messages(text: str, language: str) -> None:
    kw = governance.Keywords().match(text)
    assert kw is not None and (kw.kind, kw.language) == (governance.OPT_OUT_MARKETING, language)


@pytest.mark.parametrize(
    ("text", "flow", "params"),
    [
        ("STATUS", "order_status", {}),
        ("order A-1042", "order_status", {"rest": "A-1042"}),
        ("Order   b-77 120 .", "order_status", {"rest": "b-77 120"}),
        ("application status", "order_status", {}),
        ("RECEIPT a-9", "receipt", {"rest": "a-9"}),
        ("order", None, None),  # the keyword alone, without its words: no flow
        ("my order A-1042", None, None),
        ("stop promo", None, None),  # governance reads it first; no flow has it
    ],
)
def test_a_keyword_with_words_after_it_starts_its_flow_with_them(
    text: str, flow: str | None, params: dict[str, str] | None
) -> None:
    hit = _shipped().by_keyword(text)
    assert (hit[0].name, hit[1]) == (flow, params) if hit else flow is None


async def test_a_marketing_keyword_starts_its_flow_only_for_a_contact_who_opted_in(
    redis_url: str, tmp_path: Path
) -> None:
    (tmp_path / "deals.yaml").write_text(
        "name: deals\npurpose: marketing\ntriggers: [deals]\nstart: a\n"
        "nodes:\n  a: {say: 'This week: 2 for 1.', wait: {save: x}, default: b}\n  b: {say: Enjoy!, end: done}\n"
    )
    cfg = make_config(
        redis_url,
        engine={"flows_dir": str(tmp_path)},
        gateways={"carrier": {"type": "http", "url": "http://127.0.0.1:9/"}},
    )
    async with Runtime(cfg, clock=FakeClock(), worker=False, senders=False, http=False) as rt:
        phone = Phone(rt)
        assert await phone.text("DEALS") == []
        state = await conversations.load_state(rt.store, rt.config.engine.shards, ANN)
        assert not (state or {}).get("f")  # no run was begun
        await phone.api_consent("opted_in", marketing=True)
        assert await phone.text("DEALS") == ["This week: 2 for 1."]
        assert await phone.text("ok") == ["Enjoy!"]
