"""Journeys and Reports in a real headless Chromium (issue 20): a small NPS survey run through
the real path, its report page read and its CSV downloaded (the numbers are the API's), a start
cancelled by an operator; a viewer has no cancel button, and a crafted cancel gets 403."""

from __future__ import annotations

import csv
import io
from typing import Any

import aiohttp
from selenium.webdriver.common.by import By

from engine.app.runtime import Runtime
from engine.console import report_view
from tests.conftest import API_KEY
from tests.console_support import (
    OPERATOR,
    VIEWER,
    ConsoleEngine,
    assert_no_js_errors,
    login,
    text_in,
    wait_for,
)  # fmt: skip

#: Three customers get the survey by a journey start and answer 10, 8 and 2.
SURVEY = {"+447700900601": "10", "+447700900602": "8", "+447700900603": "2"}


def v1(engine: ConsoleEngine, method: str, path: str, body: Any = None) -> Any:
    async def call(rt: Runtime) -> Any:
        async with (
            aiohttp.ClientSession(engine.base, headers={"Authorization": f"Bearer {API_KEY}"}) as s,
            s.request(method, path, json=body) as r,
        ):
            assert r.status < 300, await r.text()
            return await r.json()

    return engine.call(call)


def run_survey(engine: ConsoleEngine) -> None:
    async def survey(rt: Runtime) -> None:
        assert engine.carrier is not None
        async with aiohttp.ClientSession(engine.base, headers={"Authorization": f"Bearer {API_KEY}"}) as s:
            for n in SURVEY:
                async with s.put(f"/v1/contacts/{n}", json={"fields": {"first_name": "Kim"}}) as r:
                    assert r.status in (200, 201)
            async with s.post("/v1/flows/nps/start", json={"contacts": list(SURVEY)}) as r:
                assert r.status == 202
        for i, (n, score) in enumerate(SURVEY.items()):
            await engine.carrier.next_message(n, timeout=10)  # the question
            await text_in(engine.base, n, score, f"survey-{i}")
            await engine.carrier.next_message(n, timeout=10)  # the follow-up

    engine.call(survey)


def scheduled_start(engine: ConsoleEngine, first: int) -> str:
    """A start due in 2030 for three new contacts: every delivery waits to be cancelled."""
    numbers = [f"+4477009007{first + i:02d}" for i in range(3)]
    for n in numbers:
        v1(engine, "PUT", f"/v1/contacts/{n}", {"fields": {}})
    body = {"contacts": numbers, "send_at": "2030-01-01T09:00:00Z"}
    return str(v1(engine, "POST", "/v1/flows/nps/start", body)["start"])


def fetch_with(
    browser: Any, engine: ConsoleEngine, url: str, method: str = "GET", **kw: Any
) -> tuple[int, str]:
    """``url`` fetched with the browser's session cookie (a download, or a crafted request)."""
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}

    async def fetch(rt: Runtime) -> tuple[int, str]:
        jar = aiohttp.CookieJar(unsafe=True)
        async with (
            aiohttp.ClientSession(cookie_jar=jar, cookies=cookies) as s,
            s.request(method, url, allow_redirects=False, **kw) as r,
        ):
            return r.status, await r.text()

    return engine.call(fetch)


def text(browser: Any, css: str) -> str:
    return str(browser.find_element(By.CSS_SELECTOR, css).text)


def test_an_operator_reads_a_report_downloads_it_and_cancels_a_start(
    browser: Any, console_engine: ConsoleEngine
) -> None:
    run_survey(console_engine)
    login(browser, console_engine.base, OPERATOR)
    browser.find_element(By.LINK_TEXT, "Reports").click()
    browser.find_element(By.LINK_TEXT, "nps").click()
    wait_for(browser, lambda b: b.find_elements(By.ID, "rates"))
    report = v1(console_engine, "GET", "/v1/flows/nps/report")
    shown = {c.get_attribute("data-rate"): c.find_element(By.CLASS_NAME, "big").text
             for c in browser.find_elements(By.CSS_SELECTOR, "#rates .card")}  # fmt: skip
    assert shown == {r.name: r.value for r in report_view.rates(report)}
    nps = report["nps"]["nps_score"]
    assert text(browser, ".nps-score") == str(nps["score"])
    for k in ("promoters", "passives", "detractors", "respondents"):
        assert text(browser, f".nps .{k}") == str(nps[k])
    # the 0-10 chart says its numbers: the survey's 10, 8 and 2 are among them
    desc = browser.find_element(By.CSS_SELECTOR, ".nps svg desc").get_attribute("textContent")
    assert desc == "; ".join(f"{i}: {n}" for i, n in enumerate(nps["distribution"]))
    assert nps["distribution"][10] >= 1 and nps["distribution"][8] >= 1 and nps["distribution"][2] >= 1

    href = browser.find_element(By.ID, "dl-report-csv").get_attribute("href")
    status, body = fetch_with(browser, console_engine, href)
    assert status == 200
    rows = dict(list(csv.reader(io.StringIO(body)))[1:])
    assert rows == {k: "" if v is None else str(v) for k, v in report_view.flatten(report)}

    sid = scheduled_start(console_engine, 0)
    browser.find_element(By.LINK_TEXT, "Journeys").click()
    browser.find_element(By.LINK_TEXT, sid).click()
    assert text(browser, "#start-status") == "scheduled"
    browser.find_element(By.ID, "cancel").click()
    wait_for(browser, lambda b: b.find_elements(By.ID, "cancel-result"))
    assert text(browser, "#cancel-result") == "Cancelled 3 deliveries."
    assert text(browser, "#start-status").startswith("cancelled")
    assert not browser.find_elements(By.ID, "cancel")
    assert v1(console_engine, "GET", f"/v1/starts/{sid}")["turns"]["skipped"] == {"cancelled": 3}
    assert_no_js_errors(browser)


def test_a_viewer_sees_no_cancel_button_and_a_crafted_cancel_is_refused(
    browser: Any, console_engine: ConsoleEngine
) -> None:
    sid = scheduled_start(console_engine, 10)
    login(browser, console_engine.base, VIEWER)
    browser.get(f"{console_engine.base}/console/journeys/{sid}")
    assert text(browser, "#start-status") == "scheduled"
    assert not browser.find_elements(By.ID, "cancel")
    assert_no_js_errors(browser)
    token = browser.find_element(By.CSS_SELECTOR, 'meta[name="csrf-token"]').get_attribute("content")
    url = f"{console_engine.base}/console/journeys/{sid}/cancel"
    status, _ = fetch_with(browser, console_engine, url, "POST", data={"csrf": token})
    assert status == 403
    assert v1(console_engine, "GET", f"/v1/starts/{sid}")["cancelled_at"] is None
