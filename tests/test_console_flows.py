"""The Flows pages over HTTP (engine/console/pages/flows.py): who may see them, 404 for an
unknown flow, the graph with the contacts waiting at each node, and the simulator's actions
(each in the audit log, each user's simulation their own)."""

from __future__ import annotations

import html
import re

from engine.app.runtime import Runtime
from engine.conversation import intake
from tests.conftest import Turns
from tests.console_support import ADMIN, OPERATOR, VIEWER, ConsoleClient

SIM = "/console/flows/appointment/simulator"
ANN = "first_name=Ann\nappointment_at=2026-12-24T10:30:00Z"


def log_of(page: str) -> list[tuple[str, str]]:
    """The simulator's transcript on a page: (kind, text) per line."""
    return [
        (k, html.unescape(re.sub(r"\s+", " ", t).strip()))
        for k, t in re.findall(r'<li class="(\w+)">(.*?)</li>', page, re.S)
    ]


async def test_the_pages_need_a_login_and_an_unknown_flow_is_404(console_rt: Runtime) -> None:
    async with ConsoleClient(console_rt) as c:
        status, _ = await c.get("/console/flows")
        assert status == 302
        status, _ = await c.post_form(SIM, {"do": "start"}, csrf="")
        assert status == 401
        await c.login(VIEWER)
        status, page = await c.get("/console/flows")
        assert status == 200
        for name in ("appointment", "nps", "order_status"):
            assert f'<tr class="flow-row status-valid" data-flow="{name}">' in page
        status, page = await c.get("/console/flows/no_such_flow")
        assert status == 404 and "no flow &#39;no_such_flow&#39; is loaded" in page
        status, _ = await c.get("/console/flows/nps?version=000000000000")
        assert status == 404
        status, _ = await c.post_form("/console/flows/no_such_flow/simulator", {"do": "start"})
        assert status == 404
        status, _ = await c.post_form(SIM, {"do": "start", "fields": ANN}, csrf="wrong")
        assert status == 403


async def test_the_graph_shows_how_many_contacts_wait_at_each_node(console_rt: Runtime) -> None:
    turns = Turns()  # on this engine's worker (conftest's fixture would start another engine)
    assert console_rt.worker is not None
    console_rt.worker.listeners.append(turns)
    numbers = ["+447700900501", "+447700900502", "+447700900503"]
    for event_id in await intake.enqueue_starts(console_rt, "nps", numbers, {}):
        assert (await turns.wait(event_id)).result == "started"
    async with ConsoleClient(console_rt) as c:
        await c.login(VIEWER)
        status, page = await c.get("/console/flows/nps")
    assert status == 200
    node = re.search(r'<g class="node wait start" data-node="ask_score".*?</g></g>', page, re.S)
    assert node is not None and ">3 waiting<" in node.group(0)
    assert page.count("data-node=") == 6 and "3 contacts waiting in this flow now" in page


async def test_a_simulated_chat_shows_replies_sets_tags_and_a_fired_timer(console_rt: Runtime) -> None:
    async with ConsoleClient(console_rt) as c:
        await c.login(VIEWER)  # reading is enough: the simulator changes nothing real
        status, page = await c.get("/console/flows/appointment")
        assert status == 200 and "appointment_at=" in page  # the required field, to fill in
        status, _ = await c.post_form(SIM, {"do": "start", "fields": ANN, "marketing": "on"})
        assert status == 303
        await c.post_form(SIM, {"do": "fire"})
        await c.post_form(SIM, {"do": "say", "text": "1"})
        _, page = await c.get("/console/flows/appointment")
        assert log_of(page)[1:] == [
            ("out", "Hi Ann, a reminder of your appointment on Thu 24 Dec at 10:30. Reply 1 to confirm, "
                    "2 to rebook or 3 to cancel."),
            ("timer", "timer fired: no reply in time at remind"),
            ("out", "Can you make your appointment? Reply 1 to confirm, 2 to rebook or 3 to cancel."),
            ("in", "1"),
            ("set", "set appointment_status = 'confirmed'"),
            ("tag", "tag #appointment_confirmed"),
            ("out", "Thanks Ann, you're confirmed. See you then!"),
            ("end", "conversation ended: confirmed"),
        ]  # fmt: skip
        status, page = await c.post_form(SIM, {"do": "fire"})
        assert status == 422 and "no timer is pending" in page
        status, page = await c.post_form(SIM, {"do": "start", "fields": "first_name Ann"})
        assert status == 422 and "line 1: write name=value" in page

    async with ConsoleClient(console_rt) as other:
        await other.login(OPERATOR)
        _, page = await other.get("/console/flows/appointment")
        assert log_of(page) == [], "a user's simulation is their own"
        status, page = await other.post_form(SIM, {"do": "say", "text": "hi"})
        assert status == 422 and "start a simulation first" in page

    async with ConsoleClient(console_rt) as admin:
        await admin.login(ADMIN)
        _, audit = await admin.get_json("/console/api/audit")
    actions = [(e["user"], e["action"]) for e in audit["entries"] if e["action"].startswith("simulator.")]
    assert actions[::-1] == [
        ("vera", "simulator.start"), ("vera", "simulator.fire"), ("vera", "simulator.say"),
    ]  # fmt: skip
