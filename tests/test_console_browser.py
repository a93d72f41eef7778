"""The console in a real headless Chromium: the foundation's pages (issue 20)."""

from __future__ import annotations

from typing import Any

from selenium.webdriver.common.by import By

from engine.app.runtime import Runtime
from tests.console_support import (
    ADMIN,
    VIEWER,
    WEBHOOK_SECRET,
    ConsoleEngine,
    assert_no_js_errors,
    js_errors,
    login,
    text_in,
    wait_for,
)


def test_an_admin_logs_in_and_out(browser: Any, console_engine: ConsoleEngine) -> None:
    login(browser, console_engine.base, ADMIN, password="not-it")
    assert browser.find_element(By.CSS_SELECTOR, "p.error").text == "Wrong user name or password."
    js_errors(browser)  # the refused login (401) is logged as a failed load
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
    assert_no_js_errors(browser)


def test_the_gateways_page_shows_the_connector_without_its_secrets(
    browser: Any, console_engine: ConsoleEngine
) -> None:
    login(browser, console_engine.base, VIEWER)
    browser.find_element(By.LINK_TEXT, "Gateways").click()
    wait_for(browser, lambda b: b.find_elements(By.ID, "gw-carrier"))
    section = browser.find_element(By.ID, "gw-carrier")
    settings = section.find_element(By.CSS_SELECTOR, "dl.settings").text
    assert "webhook_secret\n\u2022\u2022\u2022\u2022\u2022\u2022 (set)" in settings
    assert WEBHOOK_SECRET not in browser.page_source
    assert section.find_element(By.CSS_SELECTOR, ".circuit").text == "closed"
    receipts = section.find_element(By.CSS_SELECTOR, "table.receipts").text
    assert "delivered applied" in receipts  # the demo's replies were delivered
    assert_no_js_errors(browser)


def test_a_viewer_reaches_no_operator_or_admin_action(browser: Any, console_engine: ConsoleEngine) -> None:
    login(browser, console_engine.base, VIEWER)
    nav = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "nav.main a")]
    assert "Audit" not in nav and not browser.find_elements(By.CSS_SELECTOR, "button.unmask")
    assert_no_js_errors(browser)
    # Asking anyway, from the page's own script with its CSRF token: refused by the server.
    answer = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "Parley.post('/console/api/unmask', {ref: 'x'}).then(() => done('allowed'), (e) => done(e.message));"
    )
    assert answer == "this needs the operator role (you are viewer)"
    browser.get(console_engine.base + "/console/audit")
    assert browser.find_element(By.TAG_NAME, "h1").text == "403 Not allowed"
    # The browser logs each refused request (403) as an error; nothing else may be there.
    others = [e for e in js_errors(browser) if "403" not in str(e.get("message"))]
    assert others == []
