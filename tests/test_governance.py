"""Consent: STOP/START/HELP keywords win over any conversation, an opted-out or suppressed
contact is never texted (but the one confirmation), and every change is in the ledger."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.app.runtime import Runtime
from engine.conversation import intake
from engine.conversation.worker import fire_timers
from engine.core import contacts, keys
from engine.core.clock import FakeClock
from engine.governance.consent import HELP, OPT_IN, OPT_OUT, Keyword, Keywords
from tests.conftest import ANN, make_config, outbound, process_stream, shard

#: Each test that takes redis_url runs on one Redis and on a Redis Cluster (tests/conftest.py).
pytestmark = pytest.mark.redis_modes

KW = Keywords()
NPS_Q = "Hi Ann, thanks for choosing us."
STOPPED = KW.messages[OPT_OUT]["en"]
RESTARTED = KW.messages[OPT_IN]["en"]


@pytest.mark.parametrize(
    ("text", "kind", "language"),
    [
        ("STOP", OPT_OUT, "en"), ("Stop.", OPT_OUT, "en"), (" stop ", OPT_OUT, "en"),
        ("STOP!!", OPT_OUT, "en"), ("stop all", OPT_OUT, "en"), ("Opt-out", OPT_OUT, "en"),
        ("UNSUBSCRIBE", OPT_OUT, "en"), ("Cancel", OPT_OUT, "en"), ("baja", OPT_OUT, "es"),
        ("Arrêt", OPT_OUT, "fr"), ("STOPP", OPT_OUT, "de"), ("sair", OPT_OUT, "pt"),
        ("START", OPT_IN, "en"), ("unstop", OPT_IN, "en"), ("Alta", OPT_IN, "es"),
        ("HELP", HELP, "en"), ("Ayuda!", HELP, "es"), ("info", HELP, "en"), ("Hilfe", HELP, "de"),
    ],
)  # fmt: skip
def test_keywords_match_the_whole_message_forgiving_case_accents_and_punctuation(
    text: str, kind: str, language: str
) -> None:
    kw = KW.match(text)
    assert kw is not None and (kw.kind, kw.language) == (kind, language)


@pytest.mark.parametrize(
    "text",
    ["don't stop", "stopwatch", "stop it please", "start again tomorrow", "help me with my order",
     "", "   ", "🛑", "10", "STOP STOP", "unstoppable", "ending"],
)  # fmt: skip
def test_near_misses_are_not_whole_message_keywords(text: str) -> None:
    """``match`` is the whole-message keyword; the opt-out rule (tests/test_opt_out_intent.py)
    reads "stop it please", "STOP STOP" and the stop sign as opt-outs too."""
    assert KW.match(text) is None


def test_configured_keywords_and_messages_extend_the_defaults() -> None:
    kw = Keywords({"opt_out": {"en": ["enough"]}}, {"opt_out": {"en": "Bye."}})
    assert kw.match("Enough!") is not None and kw.match("stop") is not None
    assert kw.message(OPT_OUT, None, "en") == "Bye."
    # The reply is in the contact's language when there is a text for it, else the keyword's.
    assert KW.message(OPT_OUT, "es", "en") == KW.messages[OPT_OUT]["es"]
    assert KW.message(OPT_OUT, "pt-BR", "en") == KW.messages[OPT_OUT]["pt"]
    assert KW.message(OPT_OUT, "ja", "fr") == KW.messages[OPT_OUT]["fr"]


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

    async def start(self, flow: str = "nps") -> list[str]:
        await intake.enqueue_starts(self.rt, flow, [ANN], {})
        return await self.replies()

    async def replies(self) -> list[str]:
        await process_stream(self.rt, ANN)
        out = await outbound(self.rt, "carrier")
        new = [f[b"t"].decode() for f in out[self.seen :] if f[b"c"].decode() == ANN]
        self.seen = len(out)
        return new


@pytest.fixture
async def phone(redis_url: str) -> Any:
    cfg = make_config(redis_url, gateways={"carrier": {"type": "http", "url": "http://127.0.0.1:9/"}})
    async with Runtime(cfg, clock=FakeClock(), worker=False, senders=False, http=False) as rt:
        await contacts.upsert(
            rt.store,
            rt.config.engine.shards,
            contacts.Contact(ANN, {"first_name": "Ann", "appointment_at": "2026-01-03T10:00"}),
            rt.clock.now_ms(),
        )
        yield Phone(rt)


async def test_stop_ends_the_conversation_with_one_confirmation_then_silence(phone: Phone) -> None:
    (greeting,) = await phone.start()
    assert greeting.startswith(NPS_Q)
    assert await phone.text("Stop.") == [STOPPED]
    ((_, entry),) = await phone.rt.store.redis.xrange(keys.consent_ledger(ANN, shard(ANN)))
    assert entry[b"cs"] == b"opted_out" and entry[b"src"] == b"keyword" and entry[b"cause"] == b"Stop."
    assert int(entry[b"at"]) == phone.rt.clock.now_ms()
    state = await phone.rt.store.redis.get(keys.session(ANN, shard(ANN)))
    assert b'"o":"opted_out"' in state and b'"n":null' in state
    assert await phone.text("10") == []  # any other text: logged, never answered, never re-opts in
    assert await phone.text("STOP") == []  # a second STOP: no second confirmation
    assert await phone.start() == []  # a journey start is skipped
    assert await phone.text("hello, are you there?") == []
    assert await phone.text("START") == [RESTARTED]
    assert (await phone.start())[0].startswith(NPS_Q)


async def test_help_answers_without_leaving_the_conversation(phone: Phone) -> None:
    await phone.start()
    assert await phone.text("HELP") == [KW.messages[HELP]["en"]]
    assert await phone.text("10") == ["Wonderful, thank you! What do you like most about us?"]


async def test_the_gate_holds_a_reminder_for_a_contact_who_opted_out_elsewhere(phone: Phone) -> None:
    """The reminder is decided by the flow (a timer), not by a keyword: the commit's gate is
    what stops it, and the message record says why."""
    rt = phone.rt
    (reminder,) = await phone.start("appointment")
    assert reminder.startswith("Hi Ann, a reminder of your appointment")
    await rt.store.redis.hset(
        keys.governance(ANN, shard(ANN)), mapping={"cs": "opted_out", "src": "web", "at": 1}
    )
    assert isinstance(rt.clock, FakeClock)
    rt.clock.advance(4 * 3600 + 1)
    assert await fire_timers(rt) >= 1
    assert await phone.replies() == []
    records = await rt.store.redis.hgetall(keys.message_records(ANN, shard(ANN)))
    blocked = [r for r in records.values() if b'"status":"blocked"' in r]
    assert len(blocked) == 1 and b"opted out" in blocked[0] and b"Can you make" in blocked[0]


async def test_a_suppressed_number_gets_nothing_at_all(phone: Phone) -> None:
    await phone.rt.store.redis.hset(keys.governance(ANN, shard(ANN)), "sup", "carrier: landline")
    assert await phone.start() == []
    assert await phone.text("HELP") == []  # not even HELP answers
    assert await phone.text("START") == []  # opting in does not lift a suppression
    await phone.rt.store.redis.hdel(keys.governance(ANN, shard(ANN)), "sup")
    assert (await phone.start())[0].startswith(NPS_Q)


STEPS = st.lists(
    st.sampled_from(["STOP", "stop.", "Start", "HELP", "10", "7", "fine", "nps", "BAJA", "@start", "@optin-api",
                     "please stop", "STOP STOP", "\U0001f6d1", "don't stop", "stop or else"]),
    min_size=1, max_size=12,
)  # fmt: skip


def _keyword(text: str) -> Keyword | None:
    """What the turn reads ``text`` as: a keyword, or an opt-out in other words."""
    kw = KW.match(text)
    if kw is None and KW.intent(text).kind == OPT_OUT:
        kw = Keyword(OPT_OUT, KW.intent(text).language)
    return kw


@settings(max_examples=30, deadline=None)
@given(steps=STEPS)
def test_nothing_reaches_an_opted_out_contact_but_the_one_confirmation(
    redis_server: str, steps: list[str]
) -> None:
    import asyncio

    async def run() -> None:
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(redis_server)
        await r.flushdb()
        await r.aclose()
        cfg = make_config(redis_server, gateways={"carrier": {"type": "http", "url": "http://127.0.0.1:9/"}})
        async with Runtime(cfg, clock=FakeClock(), worker=False, senders=False, http=False) as rt:
            await contacts.upsert(
                rt.store, rt.config.engine.shards, contacts.Contact(ANN, {"first_name": "Ann"}), 0
            )
            p = Phone(rt)
            opted_out = False
            for step in steps:
                if step == "@start":
                    got = await p.start()
                elif step == "@optin-api":
                    await rt.store.redis.hset(
                        keys.governance(ANN, shard(ANN)), mapping={"cs": "opted_in", "src": "api"}
                    )
                    opted_out, got = False, []
                else:
                    got = await p.text(step)
                kw = _keyword(step) if not step.startswith("@") else None
                if kw is not None and kw.kind == OPT_OUT:
                    assert got == ([] if opted_out else [KW.message(OPT_OUT, None, kw.language)])
                    opted_out = True
                elif kw is not None and kw.kind == OPT_IN:
                    assert got == [KW.message(OPT_IN, None, kw.language)]
                    opted_out = False
                elif kw is not None and kw.kind == HELP:
                    assert got == [KW.messages[HELP]["en"]]
                elif opted_out:
                    assert got == [], (step, got)
                else:
                    assert len(got) <= 1
            ledger = await rt.store.redis.xrange(keys.consent_ledger(ANN, shard(ANN)))
            changes = [_keyword(s) for s in steps if not s.startswith("@")]
            assert len(ledger) == sum(1 for k in changes if k is not None and k.kind in (OPT_OUT, OPT_IN))

    asyncio.run(run())


async def _capped_phone(redis_url: str, caps: list[str]) -> tuple[Runtime, Phone]:
    cfg = make_config(
        redis_url,
        gateways={"carrier": {"type": "http", "url": "http://127.0.0.1:9/"}},
        governance={"caps": caps},
    )
    rt = Runtime(cfg, clock=FakeClock(), worker=False, senders=False, http=False)
    await rt.__aenter__()
    await contacts.upsert(
        rt.store, rt.config.engine.shards, contacts.Contact(ANN, {"first_name": "Ann"}), rt.clock.now_ms()
    )
    return rt, Phone(rt)


async def test_a_full_cap_window_blocks_business_sends_with_the_reason(redis_url: str) -> None:
    rt, phone = await _capped_phone(redis_url, ["2 per 1d"])
    try:
        assert len(await phone.start("thank_you")) == 1
        assert len(await phone.start("thank_you")) == 1
        assert await phone.start("thank_you") == []  # the third in a day is capped, and says so
        records = (await rt.store.redis.hgetall(keys.message_records(ANN, shard(ANN)))).values()
        assert sum(b'"error":"capped: 2 per 1d"' in r for r in records) == 1
        from tests.test_processes import _samples

        gate = _samples(rt.metrics.render().decode())
        assert gate[("parley_gate_total", (("decision", "capped"),))] == 1
        assert gate[("parley_gate_total", (("decision", "sent"),))] == 2
        assert isinstance(rt.clock, FakeClock)
        rt.clock.advance(86400)
        assert len(await phone.start("thank_you")) == 1  # the window rolled on
    finally:
        await rt.__aexit__(None, None, None)


async def test_replies_inside_a_conversation_are_exempt_from_caps(redis_url: str) -> None:
    rt, phone = await _capped_phone(redis_url, ["1 per 1d"])
    try:
        assert len(await phone.start("nps")) == 1  # counts: the business started it
        assert await phone.text("10") == ["Wonderful, thank you! What do you like most about us?"]
        assert len(await phone.text("Fast")) == 1  # the thanks: still a reply
        assert await phone.start("thank_you") == []  # a second business send that day: capped
    finally:
        await rt.__aexit__(None, None, None)


@settings(max_examples=25, deadline=None)
@given(
    gaps=st.lists(st.sampled_from([0, 600, 3 * 3600, 20 * 3600, 86400, 3 * 86400]), min_size=1, max_size=14)
)
def test_no_rolling_window_ever_holds_more_than_its_cap(redis_server: str, gaps: list[int]) -> None:
    import asyncio

    caps = [(3, 7 * 86400), (1, 86400)]

    async def run() -> None:
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(redis_server)
        await r.flushdb()
        await r.aclose()
        rt, phone = await _capped_phone(redis_server, ["3 per 7d", "1 per 1d"])
        try:
            assert isinstance(rt.clock, FakeClock)
            sent: list[int] = []
            for gap in gaps:
                rt.clock.advance(gap)
                now = rt.clock.now_ms() // 1000
                full = any(sum(1 for t in sent if t > now - w) >= n for n, w in caps)
                got = await phone.start("thank_you")
                # Exactly the sends that fit are sent: nothing over a cap, nothing held needlessly.
                assert len(got) == (0 if full else 1), (gap, sent, now)
                if got:
                    sent.append(now)
        finally:
            await rt.__aexit__(None, None, None)

    asyncio.run(run())


OPS = st.lists(
    st.one_of(
        st.sampled_from(["STOP", "START", "HELP", "nps", "9", "great", "@start", "@suppress", "@unsuppress"]),
        st.sampled_from([600, 4 * 3600, 9 * 3600, 86400]).map(lambda s: f"@tick {s}"),
    ),
    min_size=1, max_size=16,
)  # fmt: skip


@settings(max_examples=30, deadline=None)
@given(ops=OPS)
def test_every_rule_holds_together_over_random_texts_starts_and_clock_jumps(
    redis_server: str, ops: list[str]
) -> None:
    """Consent, suppression, caps (2 per 1d) and quiet hours (08:00-21:00 UTC) at once: no
    business send to a silenced number, outside the window or over the cap; a deferred start
    is always dealt with once its window opens."""
    import asyncio

    async def run() -> None:
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(redis_server)
        await r.flushdb()
        await r.aclose()
        cfg = make_config(
            redis_server,
            gateways={"carrier": {"type": "http", "url": "http://127.0.0.1:9/"}},
            governance={"caps": ["2 per 1d"], "send_window": "08:00-21:00", "quiet_jitter": "0s"},
        )
        clock = FakeClock()
        async with Runtime(cfg, clock=clock, worker=False, senders=False, http=False) as rt:
            await contacts.upsert(
                rt.store, rt.config.engine.shards, contacts.Contact(ANN, {"first_name": "Ann"}), 0
            )
            p = Phone(rt)
            opted_out = suppressed = False
            business: list[int] = []  # when each journey message was queued (s)

            def check(got: list[str]) -> None:
                for text in got:
                    if suppressed:
                        raise AssertionError(f"sent to a suppressed number: {text!r}")
                    if text.startswith("Thanks for your order"):  # business-started
                        now = clock.now_ms() // 1000
                        assert not opted_out, "journey message to an opted-out contact"
                        assert 8 <= (now // 3600) % 24 < 21, "journey message in quiet hours"
                        assert sum(1 for t in business if t > now - 86400) < 2, "over the cap"
                        business.append(now)

            for op in ops:
                if op.startswith("@tick"):
                    clock.advance(int(op.split()[1]))
                    await fire_timers(rt)
                    check(await p.replies())
                elif op == "@start":
                    check(await p.start("thank_you"))
                elif op == "@suppress":
                    await rt.store.redis.hset(keys.governance(ANN, shard(ANN)), "sup", "test")
                    suppressed = True
                elif op == "@unsuppress":
                    await rt.store.redis.hdel(keys.governance(ANN, shard(ANN)), "sup")
                    suppressed = False
                else:
                    got = await p.text(op)
                    kw = KW.match(op)
                    if kw is not None and kw.kind == OPT_OUT:
                        opted_out = True
                        check([])  # the confirmation is not a business send
                    elif kw is not None and kw.kind == OPT_IN:
                        opted_out = False
                    elif not suppressed and (opted_out and kw is None):
                        assert got == [], (op, got)
                    check([t for t in got if t.startswith("Thanks for your order")])
            # Every deferred start is dealt with (sent, capped, skipped) once the window opens:
            # go to the next noon (inside the window) and fire what is due.
            to_noon = (12 * 3600 - (clock.now_ms() // 1000) % 86400) % 86400 or 86400
            clock.advance(to_noon)
            await fire_timers(rt)
            check(await p.replies())
            left = await rt.store.redis.zrange(keys.timers(keys.shard_of(ANN, 4)), 0, -1)
            assert not [m for m in left if b"|d|" in m]

    asyncio.run(run())


async def test_consent_and_suppression_through_the_api_read_like_an_audit_trail(
    rt: Runtime, api: Any, carrier: Any
) -> None:
    url = f"/v1/contacts/{ANN}/consent"
    async with api.put(url, json={"status": "opted_in"}) as r:
        assert r.status == 422 and (await r.json())["error"]["message"].startswith("source: required")
    async with api.put(url, json={"status": "maybe", "source": "web"}) as r:
        assert r.status == 422 and (await r.json())["error"]["message"].startswith("status:")
    async with api.put(url, json={"status": "opted_in", "source": "keyword"}) as r:
        assert r.status == 422  # keyword is reserved for texts
    async with api.put(url, json={"status": "opted_in", "source": "web", "note": "signup form"}) as r:
        assert r.status == 200 and (await r.json())["status"] == "opted_in"
    await intake.accept_inbound(rt, gateway="carrier", contact=ANN, to="1", text="STOP!", provider_id="s1")
    assert (await carrier.next_message(ANN)).text == STOPPED
    async with api.put(
        f"/v1/suppressions/{ANN}", json={"reason": "carrier: landline", "source": "carrier"}
    ) as r:
        assert r.status == 200 and (await r.json())["suppressed"] == "carrier: landline"
    async with api.get(url) as r:
        body = await r.json()
    assert body["status"] == "opted_out" and body["source"] == "keyword"
    assert [(e["change"], e["source"], e["cause"]) for e in body["ledger"]] == [
        ("opted_in", "web", "signup form"),
        ("opted_out", "keyword", "STOP!"),
        ("suppressed", "carrier", "carrier: landline"),
    ]
    assert all(e["at"] for e in body["ledger"])
    async with api.get(url, params={"format": "csv"}) as r:
        assert r.status == 200 and r.content_type == "text/csv"
        lines = (await r.text()).strip().splitlines()
    assert lines[0] == "contact,at,change,source,cause,event,purpose" and len(lines) == 4
    assert lines[2].startswith(f"{ANN},") and ",opted_out,keyword,STOP!," in lines[2]


async def test_a_flow_can_set_its_own_caps(redis_url: str) -> None:
    """appointment.yaml says `caps: []` (a reminder of the customer's own booking): the global
    cap that holds a marketing message does not hold it."""
    rt, phone = await _capped_phone(redis_url, ["1 per 1d"])
    try:
        await contacts.upsert(
            rt.store, rt.config.engine.shards, contacts.Contact(ANN, {"first_name": "Ann", "appointment_at": "2026-01-03T10:00"}),
            rt.clock.now_ms(),
        )  # fmt: skip
        assert len(await phone.start("thank_you")) == 1  # uses the day's one send
        for _ in range(2):
            await intake.enqueue_starts(rt, "appointment", [ANN], {}, interrupt=True)
            (reminder,) = await phone.replies()
            assert reminder.startswith("Hi Ann, a reminder of your appointment")
        assert await phone.start("thank_you") == []
    finally:
        await rt.__aexit__(None, None, None)


def test_a_flow_with_a_bad_cap_is_refused_with_its_line(tmp_path: Any) -> None:
    from engine.core.errors import FlowErrors
    from engine.flows.loader import load_flow

    path = tmp_path / "promo.yaml"
    path.write_text("name: promo\ncaps: ['4 per fortnight']\nstart: a\nnodes:\n  a: {say: Hi, end: sent}\n")
    with pytest.raises(FlowErrors) as exc:
        load_flow(path)
    assert any("promo.yaml:2" in str(e) and "caps" in str(e) for e in exc.value.errors)


async def test_yes_when_asked_opts_in_and_no_opts_out_with_its_goodbye(phone: Phone) -> None:
    """The opt-in renewal flow records the answer as consent: YES (asked) opts in, NO opts out,
    and the flow's goodbye is that opt-out's one confirmation; then silence."""
    rt = phone.rt
    (ask,) = await phone.start("optin_renewal")
    assert "Reply YES to keep them" in ask
    assert await phone.text("yes please") == [
        "Thanks! You'll keep getting our texts. Reply STOP at any time to stop."
    ]
    ((_, entry),) = await rt.store.redis.xrange(keys.consent_ledger(ANN, shard(ANN)))
    assert entry[b"cs"] == b"opted_in" and entry[b"cause"] == b"yes please (in reply to optin_renewal)"
    await phone.start("optin_renewal")
    assert await phone.text("no") == ["Done - we won't text you about this again."]
    assert (await rt.store.redis.hget(keys.governance(ANN, shard(ANN)), "cs")) == b"opted_out"
    assert await phone.start("nps") == []
    assert await phone.text("yes") == []  # "yes" unasked is not an opt-in


async def _reviews(rt: Runtime) -> list[dict[str, Any]]:
    import orjson

    events = [orjson.loads(f[b"e"]) for _, f in await rt.store.redis.xrange(keys.flow_events(shard(ANN)))]
    return [e for e in events if e["t"] == "opt_out_review"]


def _review_count(rt: Runtime) -> float:
    from tests.test_processes import _samples

    return _samples(rt.metrics.render().decode()).get(("parley_opt_out_reviews_total", ()), 0.0)


@pytest.mark.parametrize(
    "text", ["please stop", "Stop texting me", "STOP STOP", "\U0001f6d1", "Unsubscribe me"]
)
async def test_a_request_to_stop_in_other_words_ends_the_conversation_like_stop(
    phone: Phone, text: str
) -> None:
    (greeting,) = await phone.start()
    assert greeting.startswith(NPS_Q)
    assert await phone.text(text) == [STOPPED]
    ((_, entry),) = await phone.rt.store.redis.xrange(keys.consent_ledger(ANN, shard(ANN)))
    assert entry[b"cs"] == b"opted_out" and entry[b"cause"] == text.encode()
    state = await phone.rt.store.redis.get(keys.session(ANN, shard(ANN)))
    assert b'"o":"opted_out"' in state
    assert await phone.text("please stop") == []  # already opted out: no second confirmation
    assert await phone.start() == []
    assert await _reviews(phone.rt) == []


async def test_a_cancellation_inside_a_conversation_is_the_flows_to_answer(phone: Phone) -> None:
    """The appointment flow asks "reply 3 to cancel": a sentence about cancelling is its
    answer, not a revocation of consent, and nobody needs to review it; a bare CANCEL is one."""
    (reminder,) = await phone.start("appointment")
    assert "3 to cancel" in reminder
    got = await phone.text("I want to cancel my order")
    assert got and got != [STOPPED]
    assert await phone.rt.store.redis.hget(keys.governance(ANN, shard(ANN)), "cs") is None
    assert await _reviews(phone.rt) == [] and _review_count(phone.rt) == 0
    # The documented precedence: a bare CANCEL is a revocation whatever the flow asked.
    assert await phone.text("Cancel") == [STOPPED]
    assert await phone.rt.store.redis.hget(keys.governance(ANN, shard(ANN)), "cs") == b"opted_out"


async def test_a_keyword_in_anything_else_is_flagged_for_review_and_counted(phone: Phone) -> None:
    rt = phone.rt
    # Outside a conversation: nobody answers it, so a person is asked to look.
    assert await phone.text("I want to cancel my order") == []
    # Inside one: the flow answers as usual, and a person is asked to look too.
    await phone.start()
    assert await phone.text("Please stop, this isn't my number") == [
        "Sorry, please reply with a number from 0 to 10."
    ]
    assert await rt.store.redis.hget(keys.governance(ANN, shard(ANN)), "cs") is None  # neither opted out
    first, second = await _reviews(rt)
    assert (first["text"], first.get("f"), first.get("run")) == ("I want to cancel my order", None, None)
    assert second["text"] == "Please stop, this isn't my number" and second["f"] == "nps" and second["run"]
    assert second["m"].startswith("in-") and second["c"] == ANN
    assert _review_count(rt) == 2
    records = await rt.store.redis.hgetall(keys.message_records(ANN, shard(ANN)))
    flagged = [r for r in records.values() if b'"opt_out_review":true' in r]
    assert len(flagged) == 2  # the inbound records say so too (GET /v1/messages)
    # A contact who already opted out: nothing to review.
    assert await phone.text("STOP") == [STOPPED]
    assert await phone.text("stop or I will report you") == []
    assert len(await _reviews(rt)) == 2 and _review_count(rt) == 2
