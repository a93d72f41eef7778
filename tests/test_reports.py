"""Results and reports of a flow, from real conversations: the report's arithmetic against a
hand computation, the export in CSV and JSONL, and the outcome events each turn leaves."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from engine.app.runtime import Runtime
from engine.conversation.outcomes import events_for
from engine.core import keys
from engine.core.clock import FakeClock
from engine.crm import reports
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import API_KEY, eventually, shard
from tests.test_sender import SECRET, engine, start

#: Ten customers get the NPS survey; what each one then says, in order ([] = silence).
SCRIPT: list[list[str]] = [
    ["9", "Fast"], ["10", "Kind staff"], ["9", "Cheap"], ["10", "Easy"],  # promoters, completed
    ["7", "More choice"],  # passive, completed
    ["8"],  # passive, no reason: expires at ask_passive
    ["3", "Late"],  # detractor, completed
    ["meh", "5"],  # a reprompt, then a detractor: expires at ask_detractor
    ["STOP"],  # opts out at ask_score
    ["HELP"],  # asks for help, then silent: expires at ask_score
]  # fmt: skip
NUMBERS = [f"+4477009000{i:02d}" for i in range(len(SCRIPT))]


async def _run_survey(
    rt: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    for n in NUMBERS:
        async with api.put(f"/v1/contacts/{n}", json={"fields": {"first_name": "Sam"}}) as r:
            assert r.status in (200, 201)
    async with api.post("/v1/flows/nps/start", json={"contacts": NUMBERS}) as r:
        assert r.status == 202
    for n in NUMBERS:
        await carrier.next_message(n)
    url = f"http://127.0.0.1:{rt.http_port}/v1/inbound/carrier"
    for n, says in zip(NUMBERS, SCRIPT, strict=True):
        clock.advance(10)  # customer i first answers 10 * (i + 1) s after the question
        for text in says:
            await carrier.text_in(url, API_KEY, n, text)
            await carrier.next_message(n)  # the flow's answer, or the opt-out confirmation
    clock.advance(3 * 86400 + 60)  # past expire_after: the silent ones expire
    assert rt.worker is not None
    await rt.worker.fire_timers()

    async def expired() -> bool:
        async with api.get("/v1/flows/nps/report") as r:
            return bool((await r.json())["runs"]["in_progress"] == 0)

    await eventually(expired, attempts=1000)


async def test_the_report_matches_a_hand_count(
    rt: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    await _run_survey(rt, api, carrier, clock)
    async with api.get("/v1/flows/nps/report") as r:
        assert r.status == 200
        report = await r.json()
    # By hand from SCRIPT: 6 completed (4 promoters, 1 passive, 1 detractor with reasons), 3
    # expired (passive without a reason, detractor without a reason, the one who only asked for
    # help), 1 opted out.
    assert report["runs"] == {
        "started": 10, "completed": 6, "expired": 3, "unanswered": 0, "in_progress": 0,
        "outcomes": {"completed": 6, "expired": 3, "opted_out": 1},
    }  # fmt: skip
    assert report["response_rate"] == 0.8  # 8 of 10 answered (STOP and HELP are not answers)
    assert report["opt_out_rate"] == 0.1
    # First answers came 10, 20, ..., 80 s after the question: the median is 45 s.
    assert report["median_time_to_reply_s"] == 45.0
    # 4 promoters, 2 passives, 2 detractors among 8 scores: (4 - 2) / 8 = 25.
    assert report["nps"] == {
        "nps_score": {
            "respondents": 8,
            "promoters": 4,
            "passives": 2,
            "detractors": 2,
            "score": 25.0,
            # scores 9, 10, 9, 10, 7, 8, 3, 5 (the reprompted "meh" is not a score)
            "distribution": [0, 0, 0, 1, 0, 1, 0, 1, 1, 2, 2],
        }
    }
    assert {d["node"]: d["runs"] for d in report["drop_off"]} == {
        "ask_score": 2, "ask_passive": 1, "ask_detractor": 1,
    }  # fmt: skip
    msgs = report["messages"]
    # Every message the carrier took (it sends no receipts here) waits for one. The STOP
    # confirmation and the HELP answer are not the flow's messages: they are counted apart.
    sent = len(carrier.received)
    assert (
        msgs["total"] == sent - 2 and msgs["awaiting_receipt"] == sent - 2 and msgs["delivery_rate"] is None
    )
    assert report["governance_messages"] == {"total": 2, "awaiting_receipt": 2, "delivered": 0, "failed": 0,
                                             "expired": 0, "rejected": 0, "blocked": 0}  # fmt: skip


async def test_results_export_one_row_per_run_in_csv_and_jsonl(
    rt: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    await _run_survey(rt, api, carrier, clock)
    async with api.get("/v1/flows/nps/results") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(await r.text())))
    assert [row["contact"] for row in sorted(rows, key=lambda x: x["contact"])] == NUMBERS
    by = {row["contact"]: row for row in rows}
    assert by[NUMBERS[0]]["nps_score"] == "9" and by[NUMBERS[0]]["nps_score_category"] == "promoter"
    assert by[NUMBERS[0]]["reason"] == "Fast" and by[NUMBERS[0]]["outcome"] == "completed"
    assert by[NUMBERS[8]]["outcome"] == "opted_out" and by[NUMBERS[8]]["opted_out"] == "True"
    assert by[NUMBERS[9]]["nps_score"] == "" and by[NUMBERS[9]]["outcome"] == "expired"
    async with api.get("/v1/flows/nps/results", params={"format": "jsonl"}) as r:
        lines = [orjson.loads(line) for line in (await r.text()).splitlines()]
    assert len(lines) == 10
    seven = next(x for x in lines if x["contact"] == NUMBERS[7])
    assert seven["results"]["nps_score"] == {"value": 5, "category": "detractor"}
    assert seven["replies"] == 2 and seven["outcome"] == "expired"


async def test_unknown_flow_and_format_are_refused_with_the_reason(api: aiohttp.ClientSession) -> None:
    async with api.get("/v1/flows/nope/report") as r:
        assert r.status == 404 and (await r.json())["error"]["code"] == "flow_not_found"
    async with api.get("/v1/flows/nps/results", params={"format": "xml"}) as r:
        assert r.status == 422 and "format" in (await r.json())["error"]["message"]


async def test_each_turn_leaves_its_events_once(
    rt: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    n = NUMBERS[0]
    await api.put(f"/v1/contacts/{n}", json={"fields": {}})
    await api.post("/v1/flows/nps/start", json={"contacts": [n]})
    await carrier.next_message(n)
    url = f"http://127.0.0.1:{rt.http_port}/v1/inbound/carrier"
    for text in ("9", "Quick"):
        await carrier.text_in(url, API_KEY, n, text)
        await carrier.next_message(n)
    entries = await rt.store.redis.xrange(keys.flow_events(shard(n)))
    kinds = [orjson.loads(f[b"e"])["t"] for _, f in entries if orjson.loads(f[b"e"])["t"] != "message"]
    assert kinds == ["started", "replied", "result", "replied", "result", "ended"]


def test_events_for_a_handoff_end_the_first_run_with_its_own_outcome() -> None:
    old: dict[str, Any] = {"f": "csat", "st": 1, "n": "ask", "ws": 5, "r": {}}
    new = {"f": "nps", "st": 9, "n": "ask_score", "ws": 9, "r": {},
           "prev": {"f": "csat", "o": "done", "r": {"score": {"v": 5, "c": "happy"}}}}  # fmt: skip
    got = [orjson.loads(e) for e in events_for("+1", "in", old, new, 9, accepted_ms=9)]
    assert [(e["t"], e["f"], e.get("outcome")) for e in got] == [
        ("result", "csat", None), ("ended", "csat", "done"), ("started", "nps", None),
    ]  # fmt: skip
    assert got[1]["next"] == "nps" and got[0]["value"] == 5


async def test_the_delivery_rate_counts_what_the_receipts_said(
    redis_url: str, tmp_path: Path, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    gw = {"carrier": {"type": "http", "url": carrier.url, "sender": "12345", "webhook_secret": SECRET}}
    async for e in engine(redis_url, tmp_path, gw, clock):
        carrier.receipt_url = f"http://127.0.0.1:{e.rt.http_port}/v1/receipts/carrier"
        carrier.receipt_secret, carrier.receipts = SECRET, "after"

        async def report_says(api: aiohttp.ClientSession = e.api, **want: Any) -> bool:
            async with api.get("/v1/flows/note/report") as r:
                got = (await r.json())["messages"]
            return all(got[k] == v for k, v in want.items())

        await start(e.api, "note", NUMBERS[:2], text="hello")
        await eventually(lambda: report_says(delivered=2))
        carrier.receipt_status = "undelivered"
        await start(e.api, "note", NUMBERS[2:3], text="hello")
        await eventually(lambda: report_says(failed=1))
        assert await report_says(total=3, delivered=2, failed=1, awaiting_receipt=0, delivery_rate=0.6667)


#: Newcombe (1998), "Interval estimation for the difference between independent proportions:
#: comparison of eleven methods", Statistics in Medicine 17:873-890, Table II: method 10 (the
#: hybrid score interval, no continuity correction) for his worked examples (a)-(h), and the two
#: figures of the issue (0/17 and 1/16 against a holdout of 0/7). (The brief quoted [0.0342,
#: 0.8113] for (c) and [0.7225, 1.0000] for (g); the method gives the table's 0.0582-0.8062 and
#: 0.6791-1.0000: 0.7225 is the Wilson lower limit of 10/10 alone.)
NEWCOMBE = [
    ("(a) 56/70 vs 48/80", 56, 70, 48, 80, (0.0524, 0.3339)),
    ("(b) 9/10 vs 3/10", 9, 10, 3, 10, (0.1705, 0.8090)),
    ("(c) 6/7 vs 2/7", 6, 7, 2, 7, (0.0582, 0.8062)),
    ("(d) 5/56 vs 0/29", 5, 56, 0, 29, (-0.0381, 0.1926)),
    ("(e) 0/10 vs 0/20", 0, 10, 0, 20, (-0.1611, 0.2775)),
    ("(f) 0/10 vs 0/10", 0, 10, 0, 10, (-0.2775, 0.2775)),
    ("(g) 10/10 vs 0/20", 10, 10, 0, 20, (0.6791, 1.0000)),
    ("(h) 10/10 vs 0/10", 10, 10, 0, 10, (0.6075, 1.0000)),
]


@pytest.mark.parametrize(("label", "c1", "n1", "c0", "n0", "want"), NEWCOMBE, ids=[x[0] for x in NEWCOMBE])
def test_the_lift_interval_is_newcombes_hybrid_score_interval(
    label: str, c1: int, n1: int, c0: int, n0: int, want: tuple[float, float]
) -> None:
    low, high = reports.newcombe(c1, n1, c0, n0)
    assert (round(low, 4), round(high, 4)) == want, label


@pytest.mark.parametrize(
    ("c", "n", "want"),
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion: comparison
    # of seven methods", Statistics in Medicine 17:857-872, Table I, method 3 (Wilson's score).
    [
        (81, 263, (0.2553, 0.3662)),
        (15, 148, (0.0624, 0.1605)),
        (0, 20, (0.0, 0.1611)),
        (1, 29, (0.0061, 0.1718)),
    ],
)
def test_the_wilson_score_interval_it_is_built_from(c: int, n: int, want: tuple[float, float]) -> None:
    low, high = reports.wilson(c, n)
    assert (round(low, 4), round(high, 4)) == want


def test_the_issues_small_arms_no_longer_claim_certainty() -> None:
    assert [round(x, 3) for x in reports.newcombe(0, 17, 0, 7)] == [-0.354, 0.184]
    assert [round(x, 3) for x in reports.newcombe(1, 16, 0, 7)] == [-0.296, 0.283]


def _fold(arms: dict[str, tuple[int, int]]) -> reports.Fold:
    """An experiment "xp" whose arms have (assigned, converted) contacts."""
    f = reports.Fold()
    for arm, (n, c) in arms.items():
        people = {f"+1555{arm}{i:04d}" for i in range(n)}
        f.assigned.setdefault("xp", {})[arm] = people
        f.converted.setdefault("xp", {})[arm] = set(sorted(people)[:c])
    return f


def test_an_arm_too_small_to_conclude_anything_is_flagged() -> None:
    rows = reports.report("promo", _fold({"holdout": (7, 0), "a": (17, 0), "b": (16, 1)}))["experiments"]
    arms = rows["xp"]["arms"]
    assert arms["a"]["lift_ci95"] == [-0.3543, 0.1843] and arms["b"]["lift_ci95"] == [-0.2955, 0.2833]
    assert arms["a"]["small_sample"] and arms["b"]["small_sample"]
    assert not arms["a"]["conclusive"] and not arms["b"]["conclusive"]
    assert "small_sample" not in arms["holdout"]
    # Enough conversions on both sides, and an interval clear of 0: conclusive.
    big = reports.report("promo", _fold({"holdout": (400, 20), "a": (400, 60)}))["experiments"]["xp"]["arms"]
    assert big["a"]["small_sample"] is False and big["a"]["conclusive"] is True
    assert big["a"]["lift_ci95"] == [round(x, 4) for x in reports.newcombe(60, 400, 20, 400)]
    # Enough counts, but an interval that straddles 0: not conclusive, and not for want of data.
    flat = reports.report("promo", _fold({"holdout": (400, 40), "a": (400, 44)}))["experiments"]["xp"]["arms"]
    assert flat["a"]["small_sample"] is False and flat["a"]["conclusive"] is False
