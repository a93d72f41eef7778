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
