"""``parley chat`` says why no conversation started (and exits nonzero), shows what a turn did
to the contact (``set``, ``tag``) and the CRM calls it made, and fires a pending timer on
``/timer`` so a reminder can be tried without waiting hours."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from aiohttp import web

from tests.conftest import ROOT, run_parley, serve

WHEN = "appointment_at=2026-12-24T10:30:00Z"


def test_a_contact_missing_a_required_field_is_told_why_and_exits_2(redis_url: str) -> None:
    proc = run_parley(
        "chat", "appointment", "--contact", "+447700900321", "--field", "first_name=Ann",
        env={"PARLEY_REDIS_URL": redis_url}, stdin="1\n",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.splitlines() == [
        "-- no conversation: flow 'appointment' needs the contact field appointment_at, which "
        "+447700900321 lacks (give it with --field appointment_at=...)"
    ]


def test_an_opted_out_contact_is_told_why_and_exits_1(redis_url: str) -> None:
    env = {"PARLEY_REDIS_URL": redis_url}
    stop = run_parley("chat", "nps", "--contact", "+447700900322", env=env, stdin="STOP\n")
    assert stop.returncode == 0, stop.stderr
    again = run_parley("chat", "nps", "--contact", "+447700900322", env=env, stdin="9\n")
    assert again.returncode == 1
    assert again.stdout.splitlines()[-1] == (
        "-- no conversation: +447700900322 opted out (they can text START, or the CRM records consent)"
    )


def test_a_marketing_flow_for_a_contact_without_the_opt_in_is_told_why(redis_url: str) -> None:
    env = {"PARLEY_REDIS_URL": redis_url}
    proc = run_parley("chat", "flash_sale", "--contact", "+447700900323", env=env, stdin="YES\n")
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[-1] == (
        "-- no conversation: flow 'flash_sale' is marketing and +447700900323 has not opted in to "
        "marketing (PUT /v1/contacts/{number}/consent with purpose: marketing records it)"
    )


def test_set_and_tag_show_in_the_transcript(redis_url: str) -> None:
    proc = run_parley(
        "chat", "appointment", "--contact", "+447700900323", "--field", "first_name=Ann", "--field", WHEN,
        env={"PARLEY_REDIS_URL": redis_url}, stdin="1\n",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1:] == [
        "> 1",
        "~ set appointment_status = 'confirmed'",
        "~ tag appointment_confirmed",
        "< Thanks Ann, you're confirmed. See you then!",
        "-- conversation ended: confirmed; results: choice='Confirm'",
    ], lines


def test_timer_fires_the_pending_reminder(redis_url: str) -> None:
    proc = run_parley(
        "chat", "appointment", "--contact", "+447700900324", "--field", WHEN,
        env={"PARLEY_REDIS_URL": redis_url}, stdin="/timer\n/timer\n1\n",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("< Hi there, a reminder of your appointment")
    assert lines[1] == "> /timer"
    assert lines[2].startswith("~ fired the wait timeout of node remind (due in 3h 59m") or lines[
        2
    ].startswith("~ fired the wait timeout of node remind (due in 4h"), lines[2]
    assert lines[3] == "< Can you make your appointment? Reply 1 to confirm, 2 to rebook or 3 to cancel."
    # The nudge waits without a timeout; the flow's expiry (3 days) is the next timer.
    assert lines[4] == "> /timer"
    assert lines[5].startswith("~ fired the conversation's expiry (due in 2d 23h") or lines[5].startswith(
        "~ fired the conversation's expiry (due in 3d"
    ), lines[5]
    assert lines[-1] == "-- conversation ended: expired; results: none"


def test_timer_with_nothing_pending_says_so(redis_url: str) -> None:
    proc = run_parley(
        "chat",
        "thank_you",
        "--contact",
        "+447700900325",
        env={"PARLEY_REDIS_URL": redis_url},
        stdin="/timer\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert "~ no timer pending" in proc.stdout or "-- conversation ended" in proc.stdout


FETCH_FLOW = """\
name: fetch
start: fetch
nodes:
  fetch:
    say: One moment...
    call:
      url: "{crm}/customers/{{{{ contact.number | urlencode }}}}"
      save: crm
      fields: {{tier: account.tier}}
      timeout: 2s
    success: tell
    failure: sorry
  tell:
    say: "You are {{{{ contact.tier | default('unknown') }}}}."
    end: told
  sorry:
    say: Sorry, try later.
    end: failed_lookup
"""


async def test_crm_calls_show_in_the_transcript(tmp_path: Path, redis_url: str) -> None:
    async def customer(request: web.Request) -> web.Response:
        return web.json_response({"account": {"tier": "gold"}})

    async with serve(("GET", "/customers/{number}", customer)) as crm:
        (tmp_path / "fetch.yaml").write_text(FETCH_FLOW.format(crm=crm))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
        env.update(PARLEY_REDIS_URL=redis_url, PARLEY_ENGINE_FLOWS_DIR=str(tmp_path))
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "parley"), "chat", "fetch", "--contact", "+447700900326",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=ROOT, env=env,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(b""), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines() == [
        "< One moment...",
        f"~ CRM GET {crm}/customers/%2B447700900326: ok",
        "~ set tier = 'gold'",
        "< You are gold.",
        "-- conversation ended: told; results: crm={'account': {'tier': 'gold'}}",
    ]


def test_the_help_tells_of_timer() -> None:
    proc = run_parley("chat", "--help")
    assert proc.returncode == 0 and "/timer" in proc.stdout and "'~' lines" in proc.stdout
