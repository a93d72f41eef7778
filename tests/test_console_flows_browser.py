"""The Flows pages in a real headless Chromium (issue 20): open a flow's graph from the list,
chat with it in the simulator with a contact field filled in, see the fields it sets and the
tags it adds, fire its reminder timer and read the reminder; no JavaScript errors."""

from __future__ import annotations

from typing import Any

from selenium.webdriver.common.by import By

from tests.console_support import VIEWER, ConsoleEngine, assert_no_js_errors, login, wait_for


def transcript(browser: Any) -> list[str]:
    return [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#sim-log li")]


def test_a_viewer_opens_a_graph_and_chats_with_the_flow(browser: Any, console_engine: ConsoleEngine) -> None:
    login(browser, console_engine.base, VIEWER)
    browser.find_element(By.LINK_TEXT, "Flows").click()
    wait_for(browser, lambda b: b.find_elements(By.ID, "flows"))
    browser.find_element(By.LINK_TEXT, "appointment").click()
    wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#graph svg"))
    nodes = browser.find_elements(By.CSS_SELECTOR, "#graph svg g.node")
    assert (
        len(nodes) == 11
        and browser.find_element(By.CSS_SELECTOR, "g.node.start").get_attribute("data-node") == "remind"
    )
    assert browser.find_elements(By.CSS_SELECTOR, "g.edge.timeout[data-from=remind][data-to=nudge]")

    fields = browser.find_element(By.ID, "sim-fields-text")
    fields.clear()
    fields.send_keys("first_name=Ann\nappointment_at=2026-12-24T10:30:00Z")
    browser.find_element(By.ID, "sim-start-button").click()
    wait_for(browser, lambda b: len(transcript(b)) >= 2)
    assert transcript(browser)[1].startswith("Hi Ann, a reminder of your appointment on Thu 24 Dec at 10:30.")
    # The graph outlines where the simulated conversation waits.
    assert browser.find_element(By.CSS_SELECTOR, "g.node.current").get_attribute("data-node") == "remind"

    browser.find_element(By.ID, "sim-fire-button").click()
    wait_for(browser, lambda b: any("Can you make your appointment?" in t for t in transcript(b)))
    assert "timer fired: no reply in time at remind" in transcript(browser)

    browser.find_element(By.ID, "sim-text").send_keys("1")
    browser.find_element(By.ID, "sim-send").click()
    wait_for(browser, lambda b: "conversation ended: confirmed" in transcript(b))
    assert transcript(browser)[-5:] == [
        "1",
        "set appointment_status = 'confirmed'",
        "tag #appointment_confirmed",
        "Thanks Ann, you're confirmed. See you then!",
        "conversation ended: confirmed",
    ]
    assert "appointment_confirmed" in browser.find_element(By.ID, "sim-contact").text
    assert_no_js_errors(browser)
