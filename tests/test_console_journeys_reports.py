"""The Journeys and Reports pages over HTTP (issue 20): who may see and do what (a viewer reads,
an operator cancels, with its CSRF token, audited), 404 for an unknown start or flow, the
numbers on the report page and in its downloads are the API's, and names a user chose (an
experiment's, an arm's) are shown as text."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from engine.app.runtime import Runtime
from engine.console import audit, report_view
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import API_KEY
from tests.console_support import OPERATOR, VIEWER, ConsoleClient, text_in

NUMBERS = ["+447700900301", "+447700900302", "+447700900303"]
HOSTILE = '<img src=x onerror="alert(1)">'


@pytest.fixture
async def v1(console_rt: Runtime) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        f"http://127.0.0.1:{console_rt.http_port}", headers={"Authorization": f"Bearer {API_KEY}"}
    ) as s:
        yield s


async def _get(v1: aiohttp.ClientSession, path: str) -> Any:
    async with v1.get(path) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def _survey(rt: Runtime, v1: aiohttp.ClientSession, carrier: SimulatedCarrier) -> None:
    """Three customers get the NPS survey (an experiment with hostile names); two answer."""
    for n in NUMBERS:
        async with v1.put(f"/v1/contacts/{n}", json={"fields": {"first_name": "Sam"}}) as r:
            assert r.status in (200, 201)
    body = {"contacts": NUMBERS, "experiment": HOSTILE, "holdout": 0, "arms": [{"name": HOSTILE}]}
    async with v1.post("/v1/flows/nps/start", json=body) as r:
        assert r.status == 202, await r.text()
    base = f"http://127.0.0.1:{rt.http_port}"
    for n in NUMBERS:
        await carrier.next_message(n)
    for i, (n, says) in enumerate(zip(NUMBERS, ["10", "4"], strict=False)):
        await text_in(base, n, says, f"t-{i}")
        await carrier.next_message(n)


async def _scheduled_start(v1: aiohttp.ClientSession) -> str:
    """A start due tomorrow: every delivery waits, so a cancel has something to cancel."""
    async with v1.post(
        "/v1/flows/nps/start", json={"contacts": NUMBERS, "send_at": "2030-01-01T09:00:00Z"}
    ) as r:
        assert r.status == 202, await r.text()
        return str((await r.json())["start"])


async def test_a_viewer_reads_starts_but_cannot_cancel_and_an_operator_can(
    console_rt: Runtime, v1: aiohttp.ClientSession
) -> None:
    for n in NUMBERS:
        await v1.put(f"/v1/contacts/{n}", json={"fields": {}})
    sid = await _scheduled_start(v1)
    async with ConsoleClient(console_rt) as viewer:
        await viewer.login(VIEWER)
        status, page = await viewer.get("/console/journeys")
        assert status == 200 and sid in page and 'class="status status-scheduled"' in page
        status, page = await viewer.get(f"/console/journeys/{sid}")
        assert status == 200 and 'data-k="waiting">3<' in page
        assert 'id="cancel-form"' not in page  # the button is not offered
        status, _ = await viewer.post_form(f"/console/journeys/{sid}/cancel", {})
        assert status == 403  # and refused if crafted
    assert (await _get(v1, f"/v1/starts/{sid}"))["cancelled_at"] is None

    async with ConsoleClient(console_rt) as op:
        await op.login(OPERATOR)
        status, page = await op.get(f"/console/journeys/{sid}")
        assert 'id="cancel-form"' in page
        assert (await op.post_form(f"/console/journeys/{sid}/cancel", {}, csrf=""))[0] == 403
        assert (await op.post_form(f"/console/journeys/{sid}/cancel", {}, csrf="forged"))[0] == 403
        assert (await _get(v1, f"/v1/starts/{sid}"))["cancelled_at"] is None
        async with op.session.post(
            f"/console/journeys/{sid}/cancel", data={"csrf": op.csrf}, allow_redirects=False
        ) as r:
            assert r.status == 303
            assert r.headers["Location"] == f"/console/journeys/{sid}?cancelled=3&too_late=0"
        status, page = await op.get(f"/console/journeys/{sid}?cancelled=3&too_late=0")
        assert "Cancelled 3 deliveries" in page and 'id="cancel-form"' not in page
        assert 'class="status-cancelled"' in page
    view = await _get(v1, f"/v1/starts/{sid}")
    assert view["cancelled_at"] is not None and view["turns"]["skipped"] == {"cancelled": 3}
    entries = await audit.read(console_rt.store)
    assert [
        (e["action"], e["user"], e["start"], e["cancelled"]) for e in entries if e["action"] == "start.cancel"
    ] == [("start.cancel", OPERATOR.name, sid, "3")]


async def test_an_unknown_start_or_flow_is_404(console_rt: Runtime) -> None:
    async with ConsoleClient(console_rt) as op:
        await op.login(OPERATOR)
        for path in ("/console/journeys/st-1-nope", "/console/reports/nope", "/console/reports/nope/report.csv",
                     "/console/reports/nope/results.csv"):  # fmt: skip
            status, page = await op.get(path)
            assert status == 404, path
            assert "nope" in page
        assert (await op.post_form("/console/journeys/st-1-nope/cancel", {}))[0] == 404


async def test_the_report_page_and_its_downloads_say_what_the_api_says(
    console_rt: Runtime, v1: aiohttp.ClientSession, carrier: SimulatedCarrier
) -> None:
    await _survey(console_rt, v1, carrier)
    report = await _get(v1, "/v1/flows/nps/report")
    assert report["runs"]["started"] == 3 and report["nps"]["nps_score"]["respondents"] == 2
    async with ConsoleClient(console_rt) as viewer:
        await viewer.login(VIEWER)
        status, index = await viewer.get("/console/reports")
        assert status == 200 and 'href="/console/reports/nps"' in index
        status, page = await viewer.get("/console/reports/nps")
        assert status == 200
        for r in report_view.rates(report):
            assert re.search(rf'data-rate="{r.name}".*?class="big">{re.escape(r.value)}<', page, re.S), r
        assert '<span class="nps-score">0.0</span>' in page  # one promoter, one detractor
        assert '<b class="promoters">1</b>' in page and '<b class="detractors">1</b>' in page
        assert "<desc>0: 0; 1: 0; 2: 0; 3: 0; 4: 1; 5: 0; 6: 0; 7: 0; 8: 0; 9: 0; 10: 1</desc>" in page
        # names a user chose are text, never markup
        assert HOSTILE not in page and "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in page
        assert 'id="dl-results-csv"' not in page  # the numbers' export is for operators
        status, body = await viewer.get("/console/reports/nps/report.csv")
        assert status == 200
        rows = dict(list(csv.reader(io.StringIO(body)))[1:])
        assert rows["runs.started"] == "3" and rows["nps.nps_score.distribution.10"] == "1"
        status, _ = await viewer.get("/console/reports/nps/results.csv")
        assert status == 403
        status, body = await viewer.get("/console/reports/nps/report.json")
        assert status == 200 and '"started": 3' in body
    async with ConsoleClient(console_rt) as op:
        await op.login(OPERATOR)
        status, page = await op.get("/console/reports/nps")
        assert 'id="dl-results-csv"' in page
        status, mine = await op.get("/console/reports/nps/results.csv")
        async with v1.get("/v1/flows/nps/results?format=csv") as r:
            assert status == 200 and mine == await r.text()
        status, lines = await op.get("/console/reports/nps/results.jsonl")
        assert status == 200 and len(lines.splitlines()) == 3
    downloads = [e for e in await audit.read(console_rt.store) if e["action"] == "results.download"]
    assert [(e["user"], e["format"]) for e in downloads] == [(OPERATOR.name, "jsonl"), (OPERATOR.name, "csv")]


async def test_campaigns_show_their_next_fire(console_rt: Runtime, v1: aiohttp.ClientSession) -> None:
    body = {
        "description": "the day before",
        "events": [{"id": "before", "flow": "nps", "field": "visit_on", "offset": "-1d", "at": "09:00"}],
    }
    async with v1.put("/v1/campaigns/visits", json=body) as r:
        assert r.status == 201, await r.text()
    async with v1.put(
        f"/v1/contacts/{NUMBERS[0]}", json={"fields": {"visit_on": "2030-03-02"}, "timezone": "Europe/London"}
    ) as r:
        assert r.status in (200, 201), await r.text()
    async with ConsoleClient(console_rt) as viewer:
        await viewer.login(VIEWER)
        status, page = await viewer.get("/console/journeys")
    assert status == 200
    row = re.search(r'<tr data-campaign="visits">.*?</tr>', page, re.S)
    assert row is not None, page
    assert "the day before" in row[0] and "-1d from <code>visit_on</code> at 09:00" in row[0]
    assert '<td class="next-fire">2030-03-01 09:00:00</td>' in row[0]  # 09:00 in London in March is UTC
