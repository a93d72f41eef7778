"""The Conversations and Inbox pages in a real headless Chromium, on the demo data of
tests/console_support.py (issue 20): a viewer reads with numbers masked and no actions; an
operator finds a conversation and reads its transcript, answers the inbox text (the reply
reaches the carrier) and returns the contact to a flow. No JavaScript errors on the way.
The viewer's test runs first: the operator's empties the inbox."""

from __future__ import annotations

from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from engine.app.runtime import Runtime
from gateways.simulators.http_carrier import Delivered
from tests.console_support import OPERATOR, VIEWER, ConsoleEngine, assert_no_js_errors, login, wait_for

MEI = "+447700900789"  # the demo contact whose text matched no flow: in the inbox


def next_message(engine: ConsoleEngine, number: str) -> Delivered:
    carrier = engine.carrier
    assert carrier is not None

    async def get(_: Runtime) -> Delivered:
        return await carrier.next_message(number, timeout=10)

    return engine.call(get)


def test_a_viewer_reads_the_inbox_and_the_live_tail_masked_without_actions(
    browser: Any, console_engine: ConsoleEngine
) -> None:
    login(browser, console_engine.base, VIEWER)
    browser.get(console_engine.base + "/console/inbox")
    row = browser.find_element(By.CSS_SELECTOR, "#inbox tbody tr")
    assert "\u2022" in row.text and MEI not in browser.page_source
    row.find_element(By.CSS_SELECTOR, "a.open").click()
    wait_for(browser, lambda b: "is my parcel coming today?" in b.find_element(By.ID, "transcript").text)
    assert not browser.find_elements(By.CSS_SELECTOR, "main form, #send, #claim, #return, #close")
    assert MEI not in browser.page_source

    browser.get(console_engine.base + "/console/conversations")
    rows = wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#tail tbody tr"))
    assert all("\u2022" in r.find_element(By.CSS_SELECTOR, "a.num").text for r in rows)
    assert any("started nps" in r.text for r in rows) and MEI not in browser.page_source
    assert_no_js_errors(browser)


def test_an_operator_finds_a_conversation_answers_the_inbox_and_returns_the_contact_to_a_flow(
    browser: Any, console_engine: ConsoleEngine
) -> None:
    base = console_engine.base
    login(browser, base, OPERATOR)
    browser.get(base + "/console/conversations")
    browser.find_element(By.ID, "q").send_keys("ann")
    browser.find_element(By.ID, "find").click()
    wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#results a.contact"))[0].click()
    transcript = wait_for(browser, lambda b: b.find_element(By.ID, "transcript"))
    assert "Quick and friendly" in transcript.text
    latencies = [td.text for td in transcript.find_elements(By.CSS_SELECTOR, "tr.msg-out td.latency")]
    assert latencies and all(t.endswith(" ms") for t in latencies)
    assert "delivered" in transcript.text and "unknown" in browser.find_element(By.ID, "consent").text

    browser.get(base + "/console/inbox")
    assert MEI in browser.find_element(By.ID, "inbox").text  # operators work with the whole number
    browser.find_element(By.CSS_SELECTOR, "#inbox a.open").click()
    wait_for(browser, lambda b: b.find_element(By.ID, "text")).send_keys("It is out for delivery today.")
    browser.find_element(By.ID, "send").click()
    wait_for(browser, lambda b: "Reply queued" in b.find_element(By.ID, "done").text)
    assert next_message(console_engine, MEI).text == "It is out for delivery today."
    wait_for(browser, lambda b: "It is out for delivery today." in b.find_element(By.ID, "transcript").text)

    Select(browser.find_element(By.ID, "flow")).select_by_value("csat")
    browser.find_element(By.ID, "return").click()
    wait_for(browser, lambda b: "Returned to the flow" in b.find_element(By.ID, "done").text)
    assert next_message(console_engine, MEI).text.startswith("Hi Mei, how satisfied")
    assert_no_js_errors(browser)
