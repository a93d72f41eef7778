"""The console in a real headless Chromium: the foundation's pages (issue 20)."""

from __future__ import annotations

from typing import Any

from selenium.webdriver.common.by import By

from engine.app.runtime import Runtime
from tests.console_support import ADMIN, VIEWER, ConsoleEngine, assert_no_js_errors, login, text_in, wait_for


def test_an_admin_logs_in_and_out(browser: Any, console_engine: ConsoleEngine) -> None:
    login(browser, console_engine.base, ADMIN)
    assert browser.find_element(By.TAG_NAME, "h1").text == "Overview"
    nav = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "nav.main a")]
    assert nav == ["Overview", "Conversations", "Inbox", "Flows", "Journeys", "Reports", "Gateways", "Audit"]
    browser.find_element(By.ID, "logout").click()
    wait_for(browser, lambda b: "/console/login" in b.current_url)
    browser.get(console_engine.base + "/console/")
    assert "/console/login" in browser.current_url  # the session is over
    assert_no_js_errors(browser)


def test_the_overview_updates_by_itself(browser: Any, console_engine: ConsoleEngine) -> None:
    login(browser, console_engine.base, VIEWER)
    before = int(browser.find_element(By.ID, "ov-turns-total").text)
    assert before >= 6  # the demo conversations
    workers = browser.find_elements(By.CSS_SELECTOR, "#ov-workers tbody tr")
    assert len(workers) == 1 and "0, 1, 2, 3" in workers[0].text
    assert "carrier" in browser.find_element(By.ID, "ov-gateways").text

    async def text(rt: Runtime) -> None:
        await text_in(console_engine.base, "+447700900999", "csat", "overview-1")

    console_engine.call(text)
    wait_for(browser, lambda b: int(b.find_element(By.ID, "ov-turns-total").text) > before)
    wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#spark-turns svg polyline"))
    browser.save_screenshot("/tmp/cb/overview.png")
    assert_no_js_errors(browser)
