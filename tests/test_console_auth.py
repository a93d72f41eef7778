"""The console's login, sessions, CSRF, roles and audit log, over HTTP (issue 20)."""

from __future__ import annotations

from engine.app.runtime import Runtime
from tests.console_support import ADMIN, ConsoleClient


async def test_a_user_logs_in_sees_the_overview_and_logs_out(console_rt: Runtime) -> None:
    async with ConsoleClient(console_rt) as c:
        status, _ = await c.get("/console/")
        assert status == 302  # not logged in: to the login form
        await c.login(ADMIN)
        status, page = await c.get("/console/")
        assert status == 200 and "Overview" in page and ADMIN.name in page
        cookie = next(m for m in c.session.cookie_jar if m.key == "parley_console")
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/console"
        status, _ = await c.post_form("/console/logout", {})
        assert status == 303
        status, _ = await c.get("/console/")
        assert status == 302
