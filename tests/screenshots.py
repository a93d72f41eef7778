"""``make screenshots``: a PNG of every console page under ``screenshots/``.

Starts an engine with the demo data of the console tests (tests/console_support.py: a throwaway
embedded redis-server, the simulated carrier, a few conversations through the real path), logs
in as the admin in a headless Debian Chromium and saves ``screenshots/<page>.png`` for each page
of :data:`PAGES` that exists (one that answers 404 is skipped, with a message). README shows two
of them from ``docs/img/`` (copy them there when the pages change).

    .venv/bin/python -m tests.screenshots [--out DIR] [--only overview,gateways]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By

from tests.console_support import ADMIN, DEMO_CONTACTS, ConsoleEngine, js_errors, login, start_chrome, text_in

#: (file name, path under /console, what must be on the page before the picture is taken: a
#: CSS selector, or "" for nothing). Page families add their rows.
PAGES: list[tuple[str, str, str]] = [
    ("login", "/login", ""),
    ("overview", "/", "#spark-turns svg polyline"),
    ("conversations", "/conversations", ""),
    ("conversation", f"/conversations/{next(iter(DEMO_CONTACTS))}", ""),
    ("inbox", "/inbox", ""),
    ("flows", "/flows", ""),
    ("flow", "/flows/nps", ""),
    ("journeys", "/journeys", ""),
    ("reports", "/reports", ""),
    ("report", "/reports/nps", ""),
    ("gateways", "/gateways", ""),
    ("audit", "/audit", ""),
]


async def traffic(base: str, seconds: float, per_s: float = 12.0) -> None:
    """Customers texting for ``seconds`` (CSAT surveys started and answered), so the Overview
    has something to draw."""
    import asyncio

    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < seconds:
        number = f"+4477009{10000 + i % 400:05d}"
        await text_in(base, number, "csat" if (i // 400) % 2 == 0 else str(i % 5 + 1), f"shot-{i}")
        i += 1
        await asyncio.sleep(1 / per_s)


async def showcase(base: str) -> None:
    """More to look at than the tests' demo data: an NPS survey answered by two dozen customers
    (scores spread over 0-10), a journey start sent now and one scheduled for later, and a
    campaign, so the Reports and Journeys pictures show what they draw."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    import aiohttp

    from tests.conftest import API_KEY

    scores = [10, 9, 9, 10, 8, 7, 9, 6, 10, 3, 9, 8, 10, 5, 9, 10, 7, 9, 2, 10, 9, 8, 10, 9]
    reasons = ["Fast delivery", "Friendly driver", "Late again", "Easy to book", "Too pricey"]
    for i, score in enumerate(scores):
        number = f"+4477009{20000 + i:05d}"
        for j, text in enumerate(("nps", str(score), reasons[i % len(reasons)])):
            await text_in(base, number, text, f"show-{i}-{j}")
            await asyncio.sleep(0.05)  # each answer after the question it answers
    later = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT10:00:00Z")
    async with aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {API_KEY}"}) as api:
        for i, number in enumerate([f"+4477009{30000 + i:05d}" for i in range(8)]):
            visit = (datetime.now(UTC) + timedelta(hours=6 * i - 20)).strftime("%Y-%m-%dT%H:%M")
            fields = {"first_name": "Sam", "visit_at": visit}
            async with api.put(f"/v1/contacts/{number}", json={"fields": fields}) as r:
                assert r.status in (200, 201), await r.text()
        now_ = [f"+4477009{30000 + i:05d}" for i in range(5)]
        async with api.post("/v1/flows/csat/start", json={"contacts": now_}) as r:
            assert r.status == 202, await r.text()
        scheduled = {"contacts": [f"+4477009{30005 + i:05d}" for i in range(3)], "send_at": later}
        async with api.post("/v1/flows/csat/start", json=scheduled) as r:
            assert r.status == 202, await r.text()
        campaign = {
            "description": "Ask how the visit went, the day after it",
            "events": [
                {"id": "after_visit", "flow": "csat", "field": "visit_at", "offset": "1d", "at": "10:00"}
            ],
        }
        async with api.put("/v1/campaigns/visits", json=campaign) as r:
            assert r.status in (200, 201), await r.text()


def shoot(browser: Any, base: str, name: str, path: str, ready: str, out: Path) -> bool:
    """One page's PNG (the whole page's height); False when the page does not exist."""
    browser.set_window_size(1280, 900)
    browser.get(base + "/console" + path)
    if browser.title.startswith("404"):
        js_errors(browser)  # the 404 itself is logged as a failed load: not this page's
        print(f"  {name:<14} skipped: {path} is not there (404)")
        return False
    if ready:
        deadline = time.monotonic() + 15
        while not browser.find_elements(By.CSS_SELECTOR, ready) and time.monotonic() < deadline:
            time.sleep(0.2)
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, max(900, min(int(height), 4000)))
    target = out / f"{name}.png"
    browser.save_screenshot(str(target))
    errors = js_errors(browser)
    note = f" ({len(errors)} JavaScript errors!)" if errors else ""
    print(f"  {name:<14} {target}{note}")
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make screenshots", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="screenshots", help="directory for the PNGs (default screenshots/)")
    p.add_argument("--only", default="", help="comma-separated page names (default: all)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = {n.strip() for n in args.only.split(",") if n.strip()}
    engine = ConsoleEngine("")
    engine.start()
    browser = start_chrome()
    taken = 0
    try:
        print(f"console at {engine.base}/console/ (demo data); screenshots to {out}/")
        shoot(browser, engine.base, "login", "/login", "", out) if not only or "login" in only else None
        login(browser, engine.base, ADMIN)
        engine.submit(lambda rt: showcase(engine.base)).result(timeout=120)
        if not only or "overview" in only:  # traffic for the live page: it samples while it is open
            busy = engine.submit(lambda rt: traffic(engine.base, 14))
            browser.get(engine.base + "/console/")
            time.sleep(12)
            busy.result(timeout=30)
        for name, path, ready in PAGES:
            if name == "login" or (only and name not in only):
                continue
            taken += shoot(browser, engine.base, name, path, ready, out)
    finally:
        browser.quit()
        engine.stop()
    print(f"{taken} page(s) taken")
    return 0


if __name__ == "__main__":
    sys.exit(main())
