"""Shared fixtures of the console tests (issue 20), loaded for every test module by
tests/conftest.py (``pytest_plugins``): the fixtures ``console_rt``, ``console_engine``,
``chrome`` and ``browser`` need no import; the helpers do::

    from tests.console_support import ADMIN, OPERATOR, VIEWER, ConsoleClient, login, assert_no_js_errors

Two ways to drive the console:

- **HTTP** (quick, a fake clock): ``console_rt`` is a running engine like conftest's ``rt`` (the
  simulated carrier, the test Redis flushed, a :class:`FakeClock`) with the three console users;
  ``ConsoleClient(console_rt)`` is a cookie-keeping aiohttp client: ``await c.login(OPERATOR)``,
  ``await c.get("/console/")``, ``await c.post_form("/console/logout", {})`` and
  ``await c.post_json("/console/api/unmask", {...})`` (both send the session's CSRF token).
- **A real browser**: ``console_engine`` (one per test module) runs an engine in a thread of its
  own, on a free port, with demo data seeded through the real path (contacts over the API, texts
  in through the carrier's signed inbound webhook, replies out through the simulated carrier, with
  delivery receipts back; one text that matched no flow sits in the inbox); ``browser`` is a
  headless Debian Chromium (one per module, cookies and logs cleared before each test);
  ``login(browser, console_engine.base, VIEWER)`` logs in through the form;
  ``assert_no_js_errors(browser)`` fails on anything the page logged as an error.

``console_engine.call(coro_fn)`` runs ``coro_fn(rt)`` on the engine's loop and returns its
result (for setting up or checking state from a synchronous browser test); the demo contacts
are :data:`DEMO_CONTACTS`, the numbers they texted from.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import html.parser
import os
import re
import shutil
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
import redis
from argon2 import PasswordHasher

from engine.app.runtime import Runtime
from engine.core.clock import FakeClock
from engine.core.config import Config
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import API_KEY, make_config

T = TypeVar("T")

CHROMIUM = os.environ.get("PARLEY_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PARLEY_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
#: The carrier connector's webhook secret (inbound texts and receipts are signed with it).
WEBHOOK_SECRET = "console-test-webhook-secret-0123"


@dataclass(frozen=True)
class ConsoleLogin:
    """A configured console user and its password."""

    name: str
    password: str
    role: str


VIEWER = ConsoleLogin("vera", "viewer-password-1", "viewer")
OPERATOR = ConsoleLogin("otto", "operator-password-1", "operator")
ADMIN = ConsoleLogin("ada", "admin-password-1", "admin")
USERS = (VIEWER, OPERATOR, ADMIN)

# Cheap argon2 parameters for the tests' hashes (the verify cost follows the hash's own).
_HASHER = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
_HASHES = {u.name: _HASHER.hash(u.password) for u in USERS}


def console_section(**over: Any) -> dict[str, Any]:
    """The ``console`` config section with the three users (``over``: other console keys)."""
    users = [{"name": u.name, "password_hash": _HASHES[u.name], "role": u.role} for u in USERS]
    return {"users": users, **over}


def console_config(redis_url: str, carrier: SimulatedCarrier, **sections: Any) -> Config:
    """A test config with the carrier connector (signed webhooks) and the console users."""
    base: dict[str, Any] = {
        "gateways": {
            "carrier": {
                "type": "http",
                "url": carrier.url,
                "sender": "12345",
                "webhook_secret": WEBHOOK_SECRET,
            }
        },
        "console": console_section(),
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(name), dict):
            base[name] = {**base[name], **value}
        else:
            base[name] = value
    return make_config(redis_url, **base)


@pytest.fixture
async def console_rt(redis_url: str, carrier: SimulatedCarrier, clock: FakeClock) -> AsyncIterator[Runtime]:
    """A running engine with the console users (HTTP on a free port, worker, senders, fake clock)."""
    async with Runtime(console_config(redis_url, carrier), clock=clock) as runtime:
        carrier.receipt_url = f"http://127.0.0.1:{runtime.http_port}/v1/receipts/carrier"
        carrier.receipt_secret = WEBHOOK_SECRET
        yield runtime


# -- HTTP ---------------------------------------------------------------------------------------


class _Meta(html.parser.HTMLParser):
    """The CSRF token in a page's ``<meta name="csrf-token">`` and the login form's hidden ``csrf``."""

    def __init__(self) -> None:
        super().__init__()
        self.meta = ""
        self.form = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "meta" and a.get("name") == "csrf-token":
            self.meta = a.get("content") or ""
        if tag == "input" and a.get("name") == "csrf" and not self.form:
            self.form = a.get("value") or ""


def csrf_of(page: str) -> tuple[str, str]:
    """(the session's CSRF token from the meta tag, the first form's ``csrf`` field)."""
    p = _Meta()
    p.feed(page)
    return p.meta, p.form


class ConsoleClient:
    """``async with ConsoleClient(rt) as c:`` — a browser-like client (cookies kept, no redirects
    followed unless asked) of the console on ``rt``'s port."""

    def __init__(self, rt: Runtime) -> None:
        self.base = f"http://127.0.0.1:{rt.http_port}"
        # unsafe: keep cookies for an IP address (127.0.0.1), as a browser does.
        self.session = aiohttp.ClientSession(self.base, cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def __aenter__(self) -> ConsoleClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def login_status(self, who: ConsoleLogin | str, password: str | None = None) -> tuple[int, str]:
        """Post the login form as a person would (the form's own CSRF token); (status, body)."""
        name = who if isinstance(who, str) else who.name
        pw = password if password is not None else (who.password if isinstance(who, ConsoleLogin) else "")
        async with self.session.get("/console/login") as r:
            _, token = csrf_of(await r.text())
        form = {"user": name, "password": pw, "csrf": token, "next": "/console/"}
        async with self.session.post("/console/login", data=form, allow_redirects=False) as r:
            body = await r.text()
            status = r.status
        if status == 303:
            await self.refresh_csrf()
        return status, body

    async def login(self, who: ConsoleLogin) -> None:
        """Log in (asserting it worked) and keep the session's CSRF token."""
        status, body = await self.login_status(who)
        assert status == 303, (status, body)

    async def refresh_csrf(self, path: str = "/console/") -> None:
        async with self.session.get(path) as r:
            self.csrf, _ = csrf_of(await r.text())

    async def get(self, path: str, **kw: Any) -> tuple[int, str]:
        kw.setdefault("allow_redirects", False)
        async with self.session.get(path, **kw) as r:
            return r.status, await r.text()

    async def get_json(self, path: str) -> tuple[int, Any]:
        async with self.session.get(path, allow_redirects=False) as r:
            return r.status, orjson.loads(await r.read())

    async def post_form(self, path: str, form: dict[str, str], *, csrf: str | None = None) -> tuple[int, str]:
        """POST a form with the session's CSRF token (``csrf``: send this one instead; "" none)."""
        token = self.csrf if csrf is None else csrf
        data = {**form, **({"csrf": token} if token else {})}
        async with self.session.post(path, data=data, allow_redirects=False) as r:
            return r.status, await r.text()

    async def post_json(self, path: str, body: Any, *, csrf: str | None = None) -> tuple[int, Any]:
        """POST JSON with ``X-CSRF-Token`` (``csrf``: send this one instead; "" none)."""
        token = self.csrf if csrf is None else csrf
        headers = {"X-CSRF-Token": token} if token else {}
        async with self.session.post(path, json=body, headers=headers, allow_redirects=False) as r:
            raw = await r.read()
            return r.status, orjson.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode()


# -- demo data, through the real path -------------------------------------------------------------

DEMO_CONTACTS: dict[str, dict[str, str]] = {
    "+447700900123": {"first_name": "Ann", "last_name": "Lee", "company": "Acme Deliveries"},
    "+447700900456": {"first_name": "Raj", "company": "Acme Deliveries"},
    "+447700900789": {"first_name": "Mei", "company": "Acme Deliveries"},
}
#: What each demo contact texts, in order (each waits for Parley's answer); the last contact's
#: last text matches no flow, so it lands in the inbox (``engine.unmatched: inbox``).
DEMO_TEXTS: dict[str, list[str]] = {
    "+447700900123": ["nps", "9", "Quick and friendly"],
    "+447700900456": ["nps", "4"],
    "+447700900789": ["is my parcel coming today?"],
}


async def text_in(base: str, sender: str, text: str, provider_id: str) -> None:
    """A customer's text into Parley's inbound webhook, signed as the provider signs it."""
    body = orjson.dumps({"from": sender, "to": "12345", "text": text, "id": provider_id})
    ts = int(time.time())
    mac = hmac.new(WEBHOOK_SECRET.encode(), b"%d." % ts + body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-Parley-Timestamp": str(ts),
               "X-Parley-Signature": f"sha256={mac}"}  # fmt: skip
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base}/v1/inbound/carrier", data=body, headers=headers) as r,
    ):
        assert r.status in (200, 202), (r.status, await r.text())


async def seed_demo(rt: Runtime, carrier: SimulatedCarrier) -> None:
    """Contacts over the API, then their texts in over the webhook, each answered before the next."""
    base = f"http://127.0.0.1:{rt.http_port}"
    async with aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {API_KEY}"}) as api:
        for number, fields in DEMO_CONTACTS.items():
            async with api.put(f"/v1/contacts/{number}", json={"fields": fields}) as r:
                assert r.status in (200, 201), await r.text()
    n = 0
    for number, texts in DEMO_TEXTS.items():
        for text in texts:
            n += 1
            await text_in(base, number, text, f"demo-{n}")
            if text != texts[-1] or number != "+447700900789":
                await carrier.next_message(number, timeout=10)


class ConsoleEngine:
    """An engine with demo data, running on its own event loop in a thread (the browser tests
    are synchronous: selenium blocks, the engine must keep serving meanwhile). ``redis_url``
    "": a throwaway embedded redis-server (``make screenshots``)."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.base = ""
        self.rt: Runtime | None = None
        self.carrier: SimulatedCarrier | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="console-engine", daemon=True)
        self._stop: asyncio.Event | None = None
        self._done: concurrent.futures.Future[None] | None = None

    def start(self) -> None:
        self._thread.start()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._done = asyncio.run_coroutine_threadsafe(self._main(ready), self._loop)
        ready.result(timeout=60)

    async def _main(self, ready: concurrent.futures.Future[None]) -> None:
        self._stop = asyncio.Event()
        try:
            async with SimulatedCarrier() as carrier:
                cfg = console_config(self.redis_url, carrier, engine={"unmatched": "inbox"})
                async with Runtime(cfg, ephemeral_redis=not self.redis_url) as rt:
                    carrier.receipt_url = f"http://127.0.0.1:{rt.http_port}/v1/receipts/carrier"
                    carrier.receipt_secret, carrier.receipts = WEBHOOK_SECRET, "after"
                    self.rt, self.carrier = rt, carrier
                    self.base = f"http://127.0.0.1:{rt.http_port}"
                    await seed_demo(rt, carrier)
                    ready.set_result(None)
                    await self._stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    def call(self, fn: Callable[[Runtime], Awaitable[T]], timeout: float = 30) -> T:
        """``await fn(rt)`` on the engine's loop; its result."""
        assert self.rt is not None
        rt = self.rt

        async def run() -> T:
            return await fn(rt)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def submit(self, fn: Callable[[Runtime], Awaitable[T]]) -> concurrent.futures.Future[T]:
        """Start ``fn(rt)`` on the engine's loop without waiting for it (``.result()`` waits)."""
        assert self.rt is not None
        rt = self.rt

        async def run() -> T:
            return await fn(rt)

        return asyncio.run_coroutine_threadsafe(run(), self._loop)

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._done is not None:
            self._done.result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def module_redis_url(redis_server: str, db: int = 9) -> str:
    """A database of the session's redis-server of its own (the function-scoped fixtures flush
    db 0 before each test; a module's engine keeps its data here), emptied."""
    url = re.sub(r"/\d+$", "", redis_server) + f"/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture(scope="module")
def console_engine(redis_server: str) -> Iterator[ConsoleEngine]:
    """One engine with demo data for the module (see :class:`ConsoleEngine`)."""
    engine = ConsoleEngine(module_redis_url(redis_server))
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


# -- the browser -----------------------------------------------------------------------------------


def chrome_options() -> Any:
    from selenium.webdriver.chrome.options import Options

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--disable-extensions", "--no-first-run",
                "--disable-background-networking", "--disable-sync", "--disable-default-apps"):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return opts


def start_chrome() -> Any:
    """A headless Debian Chromium driven by Debian's chromedriver (nothing is downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"no browser: install Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER})")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=chrome_options())
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture(scope="module")
def chrome() -> Iterator[Any]:
    """One headless Chromium for the module."""
    driver = start_chrome()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(chrome: Any, console_engine: ConsoleEngine) -> Iterator[Any]:
    """The module's Chromium, fresh for this test: no cookies, no logs left from the last one."""
    chrome.get(console_engine.base + "/console/login")
    chrome.delete_all_cookies()
    chrome.get_log("browser")
    yield chrome


def wait_for(browser: Any, condition: Callable[[Any], Any], timeout: float = 10) -> Any:
    """Wait (polling the page, bounded) until ``condition(browser)`` is truthy; its value. An
    element that is missing, or went stale because the page was replaced meanwhile, is a
    condition not met yet."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(browser, timeout, poll_frequency=0.05, ignored_exceptions=ignored).until(condition)


def login(browser: Any, base: str, who: ConsoleLogin, password: str | None = None) -> None:
    """Log in through the form and wait for the page after it: past the form, or (a wrong
    password) the form again with its error."""
    from selenium.webdriver.common.by import By

    browser.get(base + "/console/login")
    browser.find_element(By.ID, "user").send_keys(who.name)
    browser.find_element(By.ID, "password").send_keys(password if password is not None else who.password)
    browser.find_element(By.ID, "login").click()
    if password is None or password == who.password:
        wait_for(browser, lambda b: "/console/login" not in b.current_url)
    else:  # refused: the form comes back, at the same address, with its error
        wait_for(browser, lambda b: b.find_element(By.CSS_SELECTOR, "p.error"))


def js_errors(browser: Any) -> list[dict[str, Any]]:
    """What the page logged as errors since the last call (console errors, failed loads, CSP)."""
    return [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]


def assert_no_js_errors(browser: Any) -> None:
    errors = js_errors(browser)
    assert not errors, "JavaScript console errors:\n" + "\n".join(str(e.get("message")) for e in errors)
