"""The console's Gateways page (issue 20): settings with the secrets hidden, what the connector
did (receipts, outcomes, recent errors), and SMPP binds."""

from __future__ import annotations

import html

from engine.app.runtime import Runtime
from engine.console.settings_view import hide_url, settings
from engine.core.clock import FakeClock
from gateways.simulators.http_carrier import SimulatedCarrier
from gateways.simulators.smsc import SimulatedSmsc, SmscBehaviour
from tests.conftest import eventually
from tests.console_support import VIEWER, WEBHOOK_SECRET, ConsoleClient, console_config, text_in

BEARER = "Bearer sk-live-0123456789"


async def test_settings_show_with_every_secret_hidden(
    redis_url: str, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    cfg = console_config(redis_url, carrier, gateways={"carrier": {
        "type": "http", "url": carrier.url, "sender": "12345", "webhook_secret": WEBHOOK_SECRET,
        "headers": {"Authorization": BEARER, "X-Trace": "on"}, "rate": 20,
    }})  # fmt: skip
    async with Runtime(cfg, clock=clock) as rt, ConsoleClient(rt) as c:
        await c.login(VIEWER)
        status, page = await c.get("/console/gateways")
    assert status == 200
    text = html.unescape(page)
    for secret in (WEBHOOK_SECRET, BEARER, "sk-live"):
        assert secret not in text
    assert '<dt>webhook_secret</dt><dd class="secret">\u2022\u2022\u2022\u2022\u2022\u2022 (set)</dd>' in text
    assert '<dt>webhook_password</dt><dd class="secret">(not set)</dd>' in text
    assert (
        '"X-Trace": "on"' in text and '"Authorization": "\u2022\u2022\u2022\u2022\u2022\u2022 (set)"' in text
    )
    assert "<dt>sender</dt><dd>12345</dd>" in text and "<dt>rate</dt><dd>20</dd>" in text
    assert "configured: 20.0" in text


def test_which_settings_count_as_secrets() -> None:
    rows = {n: v for n, v, _ in settings({"type": "x", "url": "https://u:pw@h/p?api_key=k&to=1", "password": "pw",
                                          "system_id": "parley", "auth_token": "t", "body": {"key": "k", "id": "{{id}}"}})}  # fmt: skip
    assert (
        rows["url"]
        == "https://u:\u2022\u2022\u2022\u2022\u2022\u2022@h/p?api_key=\u2022\u2022\u2022\u2022\u2022\u2022&to=1"
    )
    assert rows["password"] == rows["auth_token"] == "\u2022\u2022\u2022\u2022\u2022\u2022 (set)"
    assert rows["system_id"] == "parley" and rows["body"] == {
        "key": "\u2022\u2022\u2022\u2022\u2022\u2022 (set)",
        "id": "{{id}}",
    }
    assert hide_url("http://h/x") == "http://h/x"


async def test_receipts_outcomes_and_recent_errors_show(
    console_rt: Runtime, carrier: SimulatedCarrier
) -> None:
    base = f"http://127.0.0.1:{console_rt.http_port}"
    carrier.receipts = "after"
    await text_in(base, "+447700900111", "csat", "mo-1")
    await carrier.next_message("+447700900111")
    carrier.fail_next = [400]  # the provider refuses the next message: it fails at once
    await text_in(base, "+447700900222", "csat", "mo-2")
    await eventually(lambda: _errors(console_rt))
    async with ConsoleClient(console_rt) as c:
        await c.login(VIEWER)

        async def receipts_seen() -> bool:
            _, page = await c.get("/console/gateways")
            return '<td>delivered</td><td>applied</td><td class="n">1</td>' in page

        await eventually(receipts_seen)
        _, page = await c.get("/console/gateways")
    assert '<tr><td>sent</td><td class="n">1</td></tr>' in page
    assert '<tr><td>failed</td><td class="n">1</td></tr>' in page
    assert "<td>rejected</td>" in page and "400" in page
    assert "+447700900222" not in page


async def _errors(rt: Runtime) -> bool:
    from gateways import recent_errors

    return bool(await recent_errors.recent(rt.store, "carrier"))


async def test_smpp_binds_show_held_of_configured(
    redis_url: str, carrier: SimulatedCarrier, clock: FakeClock
) -> None:
    behaviour = SmscBehaviour(credentials={"parley": "smpp42pw"})
    async with SimulatedSmsc(behaviour=behaviour) as smsc:
        smpp = {"type": "smpp", "host": "127.0.0.1", "port": smsc.port, "system_id": "parley",
                "password": "smpp42pw", "sender": "12345", "binds": 2}  # fmt: skip
        cfg = console_config(redis_url, carrier, gateways={"smsc": smpp})
        async with Runtime(cfg) as rt, ConsoleClient(rt) as c:
            await c.login(VIEWER)

            async def bound() -> str:
                _, page = await c.get("/console/gateways")
                return page if '<div class="big binds">2 of 2</div>' in page else ""

            page = await eventually(bound, interval=0.05)
            _, overview = await c.get_json("/console/api/overview")
    assert "smpp42pw" not in page and "<dt>system_id</dt><dd>parley</dd>" in page
    assert "in this process: " in page
    [gw] = [g for g in overview["gateways"] if g["name"] == "smsc"]
    assert gw["binds"]["held"] == 2 and gw["binds"]["of"] == 2
