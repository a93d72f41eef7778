"""The console in a real headless Chromium: the foundation's pages (issue 20)."""

from __future__ import annotations

from typing import Any

from selenium.webdriver.common.by import By

from tests.console_support import ADMIN, ConsoleEngine, assert_no_js_errors, login, wait_for


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
