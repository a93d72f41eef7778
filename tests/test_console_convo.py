"""The console's Conversations and Inbox pages over HTTP (issue 20): who may do what (a viewer
reads with numbers masked and is refused every action by the server), CSRF on every action,
answers through the gate, returns to a flow, the audit log, and clear 404s. The same journeys
in a real browser: tests/test_console_convo_browser.py."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from engine.app.runtime import Runtime
from engine.core import keys
from engine.core.clock import FakeClock
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import API_KEY, eventually
from tests.console_support import ADMIN, OPERATOR, VIEWER, ConsoleClient, console_config, text_in

ANN, MEI, NOBODY = "+447700900123", "+447700900789", "+447700900999"


@pytest.fixture
async def engine(redis_url: str, carrier: SimulatedCarrier, clock: FakeClock) -> AsyncIterator[Runtime]:
    """An engine with the console users where a text that matches no flow goes to the inbox."""
    async with Runtime(console_config(redis_url, carrier, engine={"unmatched": "inbox"}), clock=clock) as rt:
        yield rt


@pytest.fixture
async def operator(engine: Runtime) -> AsyncIterator[ConsoleClient]:
    async with ConsoleClient(engine) as c:
        await c.login(OPERATOR)
        yield c


@pytest.fixture
async def viewer(engine: Runtime) -> AsyncIterator[ConsoleClient]:
    async with ConsoleClient(engine) as c:
        await c.login(VIEWER)
        yield c


def base(rt: Runtime) -> str:
    return f"http://127.0.0.1:{rt.http_port}"


async def handed_off(rt: Runtime, client: ConsoleClient, number: str, text: str) -> str:
    """``number`` texts what matches no flow; the console link to it in the inbox (its key)."""
    await text_in(base(rt), number, text, f"{number}-{text}")

    async def listed() -> str | None:
        _, page = await client.get("/console/inbox")
        m = re.search(r'href="/console/inbox/([^"?]+)"', page)
        return m.group(1) if m else None

    key: str = await eventually(listed, attempts=1000)
    return key


async def audit_actions(rt: Runtime) -> list[dict[str, str]]:
    rows = await rt.store.redis.xrange(keys.console_audit())
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in rows]


async def test_an_operator_answers_an_inbox_text_and_returns_the_contact_to_a_flow(
    engine: Runtime, operator: ConsoleClient, carrier: SimulatedCarrier
) -> None:
    key = await handed_off(engine, operator, MEI, "is my parcel coming today?")
    status, page = await operator.get(f"/console/inbox/{key}")
    assert status == 200 and MEI in page and "is my parcel coming today?" in page  # operators see it whole
    assert 'id="send"' in page and 'id="return"' in page

    # Without the session's CSRF token the server refuses (and nothing is sent).
    status, _ = await operator.post_form(f"/console/inbox/{key}/reply", {"text": "Hi"}, csrf="")
    assert status == 403
    status, _ = await operator.post_form(f"/console/inbox/{key}/reply", {"text": "Yes, before 6pm."})
    assert status == 303
    got = await carrier.next_message(MEI)
    assert got.text == "Yes, before 6pm."
    _, page = await operator.get(f"/console/inbox/{key}?done=replied")
    assert "Reply queued" in page and "claimed by otto" in page  # answering claims it

    status, page = await operator.post_form(f"/console/inbox/{key}/return", {"flow": "nope"})
    assert status == 422 and "no flow &#39;nope&#39;" in page
    status, _ = await operator.post_form(f"/console/inbox/{key}/return", {"flow": "csat"})
    assert status == 303
    assert (await carrier.next_message(MEI)).text.startswith("Hi there, how satisfied")

    async def left() -> bool:
        return (await operator.get(f"/console/inbox/{key}"))[0] == 404

    await eventually(left, attempts=1000)
    steps = [
        (a["action"], a["user"]) for a in await audit_actions(engine) if a["action"].startswith("inbox.")
    ]
    assert steps == [("inbox.reply", "otto"), ("inbox.return.refused", "otto"), ("inbox.return", "otto")]
    assert all(MEI not in str(a) for a in await audit_actions(engine))  # a digest, never the number


async def test_a_viewer_reads_masked_numbers_and_is_refused_every_action(
    engine: Runtime, operator: ConsoleClient, viewer: ConsoleClient, carrier: SimulatedCarrier
) -> None:
    key = await handed_off(engine, operator, MEI, "hello?")
    _, listing = await viewer.get("/console/inbox")
    vkey = re.search(r'href="/console/inbox/([^"?]+)"', listing)
    assert vkey is not None and MEI not in listing and "+4477" in listing
    status, page = await viewer.get(f"/console/inbox/{vkey.group(1)}")
    assert status == 200 and MEI not in page and "hello?" in page
    assert "<form" not in page.split("<main>")[1]  # no action forms (logout is in the header)
    for action, form in [
        ("claim", {}),
        ("reply", {"text": "x"}),
        ("close", {}),
        ("return", {"flow": "csat"}),
    ]:
        status, _ = await viewer.post_form(f"/console/inbox/{key}/{action}", form)
        assert status == 403, action
    # ... and a typed number does not open a contact for a viewer
    status, _ = await viewer.get(f"/console/conversations/{MEI}")
    assert status == 404
    assert not [a for a in await audit_actions(engine) if a["action"].startswith("inbox.")]
    assert carrier.received == []


async def test_find_a_contact_by_number_or_name_and_read_its_transcript(
    engine: Runtime, operator: ConsoleClient, viewer: ConsoleClient, carrier: SimulatedCarrier
) -> None:
    async with aiohttp.ClientSession(base(engine), headers={"Authorization": f"Bearer {API_KEY}"}) as api:
        body = {"fields": {"first_name": "Ann", "last_name": "Lee", "city": "Leeds"}}
        async with api.put(f"/v1/contacts/{ANN}", json=body) as r:
            assert r.status in (200, 201)
    await text_in(base(engine), ANN, "csat", "a-1")
    await carrier.next_message(ANN)

    status, page = await operator.get("/console/conversations?q=ann lee")
    link = re.search(r'<a class="contact" href="(/console/conversations/[^"]+)">Ann Lee</a>', page)
    assert status == 200 and link is not None
    assert re.search(
        r'class="contact" href="[^"]+">Ann Lee',
        (await operator.get("/console/conversations?q=city=leeds"))[1],
    )
    assert "No contact matches" in (await operator.get("/console/conversations?q=zed"))[1]

    status, page = await operator.get(link.group(1))
    assert status == 200
    assert "csat" in page and "waiting" in page and '<b class="node">ask</b>' in page  # flow, node, state
    assert "<dt>Expires</dt>" in page  # the held session's time to live
    assert "Hi Ann, how satisfied" in page and 'class="n latency"' in page
    assert 'id="consent"' in page and "unknown" in page

    # STOP: the consent card and its ledger say so, with the source and the cause.
    await text_in(base(engine), ANN, "STOP", "a-2")
    await carrier.next_message(ANN)
    _, page = await operator.get(link.group(1))
    consent = page.split('id="consent"')[1].split("</section>")[0]
    assert (
        'class="consent-opted_out">opted out' in consent and "<td>opted_out</td><td>keyword</td>" in consent
    )

    # A number in the search goes to its contact (by reference: no number in the address).
    status, _ = await viewer.get("/console/conversations?q=07700 900123")
    assert status == 303
    status, page = await viewer.get("/console/conversations?q=07700 900123", allow_redirects=True)
    assert status == 200 and "Hi Ann, how satisfied" in page and ANN not in page and "+4477" in page

    # The transcript rows the page refreshes, and the live tail (contacts masked).
    key = link.group(1).rsplit("/", 1)[1]
    status, rows = await viewer.get_json(f"/console/api/conversations/{key}/transcript")
    assert status == 200 and rows["count"] == 4 and "Hi Ann" in rows["html"]
    status, tail = await viewer.get_json("/console/api/conversations/tail")
    assert status == 200 and [e["summary"] for e in tail["events"] if e["kind"] == "started"] == [
        "started csat"
    ]
    assert ANN not in orjson.dumps(tail).decode() and tail["since"] > 0


async def test_an_unknown_contact_is_a_404_that_says_so(
    operator: ConsoleClient, viewer: ConsoleClient
) -> None:
    status, page = await operator.get(f"/console/conversations?q={NOBODY}")
    assert status == 404 and f"no contact {NOBODY}: nobody with this number has texted or been added" in page
    status, page = await viewer.get(f"/console/conversations?q={NOBODY}")
    assert status == 404 and NOBODY not in page and "no contact +4477" in page
    status, page = await operator.get("/console/conversations/not-a-link")
    assert status == 404 and "not a link to a contact" in page
    status, page = await operator.get(f"/console/inbox/{NOBODY}")
    assert status == 404 and "is not in the inbox" in page
    status, body = await operator.get_json("/console/api/conversations/tail?since=yesterday")
    assert status == 422 and body["error"]["message"].startswith("since:")
    status, page = await operator.get("/console/conversations?q=%2B999 12345678")
    assert status == 200 and "is not a phone number" in page


async def test_a_contact_claimed_by_one_person_is_refused_to_another_with_the_text_kept(
    engine: Runtime, operator: ConsoleClient, carrier: SimulatedCarrier
) -> None:
    key = await handed_off(engine, operator, MEI, "anyone there?")
    status, _ = await operator.post_form(f"/console/inbox/{key}/claim", {})
    assert status == 303
    async with ConsoleClient(engine) as admin:
        await admin.login(ADMIN)
        status, page = await admin.post_form(f"/console/inbox/{key}/reply", {"text": "I can help"})
        assert status == 409 and "claimed by otto" in page and ">I can help</textarea>" in page
        status, page = await admin.post_form(f"/console/inbox/{key}/close", {})
        assert status == 409
    steps = [(a["action"], a["user"], a.get("code")) for a in await audit_actions(engine)]
    assert [s for s in steps if s[0].startswith("inbox.")] == [
        ("inbox.claim", "otto", None),
        ("inbox.reply.refused", "ada", "claimed"),
        ("inbox.close.refused", "ada", "claimed"),
    ]
    assert carrier.received == []
