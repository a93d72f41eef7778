"""The console's login, sessions, CSRF, roles and audit log, over HTTP (issue 20): what a person
(or someone probing) meets at the door."""

from __future__ import annotations

import re

import aiohttp
import pytest
from argon2 import PasswordHasher
from yarl import URL

from engine.app.runtime import Runtime
from engine.core import keys
from engine.core.clock import FakeClock
from engine.core.errors import ConfigError
from tests.conftest import API_KEY, make_config, run_parley
from tests.console_support import ADMIN, OPERATOR, VIEWER, ConsoleClient, console_section

ANN = "+447700900123"


def session_cookie(c: ConsoleClient) -> str:
    return next((m.value for m in c.session.cookie_jar if m.key == "parley_console"), "")


async def audit_actions(c: ConsoleClient) -> list[tuple[str, str]]:
    """(action, user) of every audit entry, oldest first (read as an admin through the console)."""
    status, body = await c.get_json("/console/api/audit")
    assert status == 200, body
    return [(e["action"], e["user"]) for e in reversed(body["entries"])]


async def test_a_user_logs_in_sees_the_overview_and_logs_out(console_rt: Runtime) -> None:
    async with ConsoleClient(console_rt) as c:
        status, _ = await c.get("/console/")
        assert status == 302  # not logged in: to the login form
        await c.login(ADMIN)
        status, page = await c.get("/console/")
        assert status == 200 and "Overview" in page and ADMIN.name in page
        cookie = next(m for m in c.session.cookie_jar if m.key == "parley_console")
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/console"
        assert not cookie["secure"]  # plain HTTP, secure_cookies off
        status, _ = await c.post_form("/console/logout", {})
        assert status == 303
        status, _ = await c.get("/console/")
        assert status == 302


async def test_a_page_asked_for_before_login_is_where_the_login_leads(console_rt: Runtime) -> None:
    async with ConsoleClient(console_rt) as c:
        async with c.session.get("/console/audit?before=1-0", allow_redirects=False) as r:
            assert r.status == 302
            login_at = URL(r.headers["Location"])
            assert (login_at.path, login_at.query["next"]) == ("/console/login", "/console/audit?before=1-0")
        async with c.session.get(r.headers["Location"]) as r:
            page = await r.text()
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token is not None and 'name="next" value="/console/audit?before=1-0"' in page
        form = {
            "user": ADMIN.name,
            "password": ADMIN.password,
            "csrf": token[1],
            "next": "/console/audit?before=1-0",
        }
        async with c.session.post("/console/login", data=form, allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, "/console/audit?before=1-0")


@pytest.mark.parametrize(
    "target", ["//evil.example/x", "https://evil.example/", "/v1/contacts", "/console\\@evil"]
)
async def test_login_never_sends_the_user_off_the_console(console_rt: Runtime, target: str) -> None:
    async with ConsoleClient(console_rt) as c:
        async with c.session.get("/console/login") as r:
            token = re.search(r'name="csrf" value="([^"]+)"', await r.text())
        assert token is not None
        form = {"user": VIEWER.name, "password": VIEWER.password, "csrf": token[1], "next": target}
        async with c.session.post("/console/login", data=form, allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, "/console/")


async def test_a_wrong_password_or_unknown_user_gets_no_session(console_rt: Runtime) -> None:
    async with ConsoleClient(console_rt) as c:
        status, page = await c.login_status(OPERATOR, "not-the-password")
        assert status == 401 and "Wrong user name or password." in page
        assert session_cookie(c) == ""
        status, page = await c.login_status("nobody", "whatever")
        assert status == 401 and "Wrong user name or password." in page  # the same words: names stay secret
        status, page = await c.login_status(OPERATOR, "")
        assert status == 422 and "Give a user name and a password." in page
        assert session_cookie(c) == ""
        await c.login(ADMIN)
        assert await audit_actions(c) == [("login.failed", OPERATOR.name), ("login.failed", "nobody"),
                                          ("login", ADMIN.name)]  # fmt: skip


async def test_the_login_form_needs_its_own_csrf_token(console_rt: Runtime) -> None:
    async with ConsoleClient(console_rt) as c:
        form = {"user": ADMIN.name, "password": ADMIN.password, "next": "/console/"}
        async with c.session.post("/console/login", data=form, allow_redirects=False) as r:
            assert r.status == 403  # no form token, no cookie token
        await c.get("/console/login")  # the cookie half, but a forged form half
        async with c.session.post(
            "/console/login", data={**form, "csrf": "forged"}, allow_redirects=False
        ) as r:
            assert r.status == 403 and "CSRF" in await r.text()
        assert session_cookie(c) == ""


async def test_repeated_failures_lock_a_name_out_until_the_window_passes(
    console_rt: Runtime, clock: FakeClock
) -> None:
    attempts = console_rt.config.console.lockout_attempts
    window = console_rt.config.console.lockout_window
    async with ConsoleClient(console_rt) as c:
        for _ in range(attempts - 1):
            status, _ = await c.login_status(OPERATOR, "guess")
            assert status == 401
        status, page = await c.login_status(OPERATOR, "guess")
        assert status == 429 and "Too many failed logins for this user" in page
        status, page = await c.login_status(OPERATOR)  # the right password: still locked out
        assert status == 429 and session_cookie(c) == ""
        async with ConsoleClient(console_rt) as other:  # the others are not locked out
            await other.login(VIEWER)
        clock.advance(window - 1)
        assert (await c.login_status(OPERATOR))[0] == 429
        clock.advance(2)
        await c.login(OPERATOR)
        # A good login forgets the failures: the next wrong password is the first again.
        async with ConsoleClient(console_rt) as again:
            assert (await again.login_status(OPERATOR, "guess"))[0] == 401
    async with ConsoleClient(console_rt) as admin:
        await admin.login(ADMIN)
        actions = [a for a, u in await audit_actions(admin) if u == OPERATOR.name]
    assert actions == ["login.failed"] * attempts + [
        "lockout",
        "login.locked",
        "login.locked",
        "login",
        "login.failed",
    ]


async def test_logout_ends_the_session_on_the_server(console_rt: Runtime) -> None:
    async with ConsoleClient(console_rt) as c:
        await c.login(OPERATOR)
        stolen = session_cookie(c)
        status, _ = await c.post_form("/console/logout", {})
        assert status == 303
    # Someone who kept a copy of the cookie gets nothing with it.
    async with aiohttp.ClientSession(
        f"http://127.0.0.1:{console_rt.http_port}", cookies={"parley_console": stolen}
    ) as replay:
        async with replay.get("/console/", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"].startswith("/console/login")
        async with replay.get("/console/api/audit") as r:
            assert r.status == 401 and (await r.json())["error"]["code"] == "unauthorized"
    assert await console_rt.store.redis.keys(keys.console_session("*")) == []


async def test_an_idle_session_ends_and_a_used_one_lives_on(console_rt: Runtime, clock: FakeClock) -> None:
    idle = console_rt.config.console.session_idle_timeout
    async with ConsoleClient(console_rt) as c:
        await c.login(VIEWER)
        for _ in range(3):  # used every half timeout: alive well past one timeout
            clock.advance(idle / 2)
            assert (await c.get("/console/"))[0] == 200
        clock.advance(idle + 1)
        assert (await c.get("/console/"))[0] == 302


async def test_every_post_needs_the_sessions_csrf_token(console_rt: Runtime) -> None:
    async with ConsoleClient(console_rt) as c:
        await c.login(OPERATOR)
        for csrf in ("", "wrong-token"):
            status, page = await c.post_form("/console/logout", {}, csrf=csrf)
            assert status == 403 and "CSRF" in page
            status, body = await c.post_json("/console/api/unmask", {"ref": "x"}, csrf=csrf)
            assert status == 403 and body["error"]["code"] == "forbidden"
        assert (await c.get("/console/"))[0] == 200  # still logged in: nothing was done
        # Another session's token does not do either.
        async with ConsoleClient(console_rt) as other:
            await other.login(OPERATOR)
            status, _ = await c.post_form("/console/logout", {}, csrf=other.csrf)
            assert status == 403


async def test_a_viewer_cannot_unmask_an_operator_can_and_it_is_audited(console_rt: Runtime) -> None:
    from engine.console import masking

    async with ConsoleClient(console_rt) as admin:
        await admin.login(ADMIN)  # makes the console's key
    secret = await console_rt.store.redis.get(keys.console_secret())
    assert secret is not None
    ref = masking.seal(secret, ANN)
    async with ConsoleClient(console_rt) as viewer:
        await viewer.login(VIEWER)
        status, body = await viewer.post_json("/console/api/unmask", {"ref": ref})
        assert status == 403 and "operator" in body["error"]["message"]
    async with ConsoleClient(console_rt) as op:
        await op.login(OPERATOR)
        assert await op.post_json("/console/api/unmask", {"ref": ref}) == (200, {"number": ANN})
        tampered = ref[:-2] + ("AA" if ref[-2:] != "AA" else "BB")
        status, body = await op.post_json("/console/api/unmask", {"ref": tampered})
        assert status == 422 and body["error"]["message"].startswith("ref:")
    async with ConsoleClient(console_rt) as admin:
        await admin.login(ADMIN)
        status, body = await admin.get_json("/console/api/audit")
        unmask = [e for e in body["entries"] if e["action"] == "unmask"]
        assert len(unmask) == 1 and unmask[0]["user"] == OPERATOR.name and unmask[0]["role"] == "operator"
        assert unmask[0]["masked"] == "+4477\u2022\u2022\u2022\u2022\u2022123"
        assert ANN not in str(body)  # no number in the audit log


async def test_only_admins_read_the_audit_log(console_rt: Runtime) -> None:
    for who in (VIEWER, OPERATOR):
        async with ConsoleClient(console_rt) as c:
            await c.login(who)
            assert (await c.get("/console/audit"))[0] == 403
            assert (await c.get_json("/console/api/audit"))[0] == 403
            _, page = await c.get("/console/")
            assert 'href="/console/audit"' not in page  # the nav hides it too
    async with ConsoleClient(console_rt) as c:
        await c.login(ADMIN)
        status, page = await c.get("/console/audit")
        assert status == 200 and 'href="/console/audit"' in page
        assert page.count('<td class="action">login</td>') == 3


async def test_an_api_key_does_not_open_the_console_nor_the_cookie_the_api(console_rt: Runtime) -> None:
    base = f"http://127.0.0.1:{console_rt.http_port}"
    async with aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {API_KEY}"}) as api:
        async with api.get("/console/", allow_redirects=False) as r:
            assert r.status == 302
        async with api.get("/console/api/audit") as r:
            assert r.status == 401
        async with api.get("/v1/contacts") as r:
            assert r.status == 200  # the key still opens the API
    async with ConsoleClient(console_rt) as c:
        await c.login(ADMIN)
        async with c.session.get("/v1/contacts") as r:
            assert r.status == 401
        async with c.session.post("/v1/messages", json={"to": ANN, "text": "hi"}) as r:
            assert r.status == 401


async def test_unknown_console_paths_are_a_page_and_json_under_api(console_rt: Runtime) -> None:
    async with ConsoleClient(console_rt) as c:
        await c.login(VIEWER)
        status, page = await c.get("/console/no-such-page")
        assert status == 404 and "<h1>404 Not found</h1>" in page
        status, body = await c.get_json("/console/api/no-such-thing")
        assert status == 404 and body["error"]["code"] == "not_found"
        async with c.session.get("/console", allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (302, "/console/")
        async with c.session.get("/console/static/console.js") as r:
            assert r.status == 200 and "Parley" in await r.text()
        async with c.session.get("/console/") as r:
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
            assert r.headers["Cache-Control"] == "no-store"


async def test_secure_cookies_are_marked_secure(redis_url: str, carrier: object, clock: FakeClock) -> None:
    from tests.console_support import console_config

    cfg = console_config(redis_url, carrier, console={"secure_cookies": True})  # type: ignore[arg-type]
    async with Runtime(cfg, clock=clock) as rt, ConsoleClient(rt) as c:
        async with c.session.get("/console/login") as r:
            token = re.search(r'name="csrf" value="([^"]+)"', await r.text())
            assert "Secure" in r.headers["Set-Cookie"]
        assert token is not None
        # The client keeps Secure cookies for https only: hand the form's token back by hand.
        form = {"user": ADMIN.name, "password": ADMIN.password, "csrf": token[1], "next": "/console/"}
        async with c.session.post(
            "/console/login", data=form, cookies={"parley_console_login": token[1]}, allow_redirects=False
        ) as r:
            assert r.status == 303
            cookie = next(h for h in r.headers.getall("Set-Cookie") if h.startswith("parley_console="))
            assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


@pytest.mark.parametrize(
    ("user", "key", "problem"),
    [
        (
            {"name": "ada", "password_hash": "plain-text", "role": "admin"},
            "console.users[0].password_hash",
            "not an argon2 hash",
        ),
        (
            {
                "name": "ada",
                "password_hash": "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
                "role": "root",
            },
            "console.users[0].role",
            "viewer, operator, admin",
        ),
        (
            {"name": "a b", "password_hash": "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g"},
            "console.users[0].name",
            "letters",
        ),
        (
            {"password_hash": "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g"},
            "console.users[0].name",
            "missing",
        ),
    ],
)
def test_a_wrong_console_user_is_named_at_load(user: dict[str, str], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_config("redis://127.0.0.1:1", console={"users": [user]})
    assert err.value.key == key and problem in str(err.value)


def test_a_user_listed_twice_is_refused() -> None:
    users = console_section()["users"]
    with pytest.raises(ConfigError) as err:
        make_config("redis://127.0.0.1:1", console={"users": [*users, users[0]]})
    assert err.value.key == "console.users[3].name"


def test_hash_password_prints_an_argon2_hash_of_stdin() -> None:
    done = run_parley("console", "hash-password", stdin="correct horse battery\n")
    assert done.returncode == 0, done.stderr
    hashed = done.stdout.strip()
    assert hashed.startswith("$argon2id$")
    assert PasswordHasher().verify(hashed, "correct horse battery")
    # It is a valid console.users entry as printed.
    cfg = make_config("redis://127.0.0.1:1", console={"users": [{"name": "ada", "password_hash": hashed}]})
    assert cfg.console.users[0].role == "viewer"
    assert run_parley("console", "hash-password", stdin="\n").returncode == 2
