"""A template that fails for one contact ends that run ``failed``, blamed on the run and node it
failed in, with a short reason; the customer gets the flow's ``fallback`` (if it has one); the
event never reaches the dead letters. Each case is played through the real engine (stream,
worker, commit, sender) with a console gateway, as transcripts are."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.app.runtime import Runtime
from engine.core import keys
from engine.core.clock import FakeClock
from tests.conftest import make_config
from tests.test_transcripts import Player, Transcript

FALLBACK = "Sorry, something went wrong on our side. We will text you again soon."

#: ``{first}`` is said when the flow starts, ``{later}`` after the customer's first reply.
FLOW = """\
name: t
fields: [orders]
triggers: [go]
{fallback}start: a
nodes:
  a:
    say: {first}
    wait: {{}}
    default: b
  b:
    say: {later}
    end: done
"""
#: A flow that ends at once, to leave an earlier run behind.
EARLIER = "name: earlier\ntriggers: [hello]\nstart: a\nnodes:\n  a: {say: Hi!, end: greeted}\n"


@dataclass(frozen=True)
class Failing:
    label: str
    template: str
    reason: str  # a word the outcome event's reason must contain
    fields: dict[str, Any] = field(default_factory=lambda: {"orders": "many"})


FAILING = [
    Failing("wrong type of contact field", "'{{ contact.orders + 1 }}'", "str"),
    Failing("sandbox refusal", "'{{ contact.tags.append(1) }}'", "unsafe"),
    Failing("huge range", "'{{ range(contact.orders | length * 10**9) | list | length }}'", "range"),
    Failing("macro recursion", "'{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(contact.orders) }}'", "recursion"),
    Failing("huge string", "\"{{ (contact.first_name | default('ab')) * 100000000 }}\"", "long"),
    Failing("message over 10 segments", "'{{ \"word \" * 400 }} {{ contact.orders }}'", "segments"),
    Failing("result not a date", "'{{ contact.orders | datetime }}'", "date"),
]  # fmt: skip


@dataclass
class Played:
    events: list[dict[str, Any]]  # the outcome events, oldest first
    dead: int  # dead letters


async def _play(
    tmp_path: Path, redis_url: str, flow: str, fields: dict[str, Any], steps: str, language: str = "en"
) -> Played:
    (tmp_path / "t.yaml").write_text(flow)
    (tmp_path / "earlier.yaml").write_text(EARLIER)
    t = Transcript(tmp_path / "case.txt", {"flow": "t", "by": "trigger", "language": language}, dict(fields))
    t.steps = [(n, line[0], line[2:]) for n, line in enumerate(steps.strip().splitlines(), 1)]
    clock = FakeClock(int(dt.datetime(2026, 11, 22, 9, tzinfo=dt.UTC).timestamp() * 1000))
    cfg = make_config(
        redis_url,
        engine={"flows_dir": str(tmp_path), "timer_poll": "1h"},
        gateways={"console": {"type": "console"}},
    )
    async with Runtime(cfg, clock=clock, http=False) as rt:
        fx = [keys.flow_events(s) for s in range(rt.config.engine.shards)]
        for k in (*fx, keys.dead_letters()):
            await rt.store.redis.delete(k)
        await Player(rt, clock, t).play()
        entries = [e for k in fx for e in await rt.store.redis.xrange(k)]  # one contact: one shard
        return Played(
            [orjson.loads(f[b"e"]) for _, f in entries], await rt.store.redis.xlen(keys.dead_letters())
        )


def _check_failed_run(played: Played, node: str, reason: str) -> None:
    events = played.events
    started = [e for e in events if e["t"] == "started" and e["f"] == "t"]
    ended = [e for e in events if e["t"] == "ended" and e["f"] == "t"]
    assert len(started) == 1 and len(ended) == 1, events
    assert ended[0]["outcome"] == "failed"
    assert ended[0]["run"] == started[0]["run"], "the failure is blamed on another run"
    assert ended[0]["node"] == node
    assert reason in ended[0]["reason"].lower() and len(ended[0]["reason"]) <= 200, ended[0]["reason"]
    assert played.dead == 0


@pytest.mark.parametrize("case", FAILING, ids=[c.label for c in FAILING])
@pytest.mark.parametrize("earlier", [False, True], ids=["first run", "after an earlier run"])
async def test_a_failing_first_node_ends_the_run_failed_with_the_fallback(
    case: Failing, earlier: bool, tmp_path: Path, redis_url: str
) -> None:
    before = "> hello\n< Hi!\n" if earlier else ""
    flow = FLOW.format(fallback=f"fallback: {FALLBACK}\n", first=case.template, later="Bye")
    t0 = time.monotonic()
    played = await _play(
        tmp_path, redis_url, flow, case.fields, f"{before}> go\n< {FALLBACK}\n= outcome: failed"
    )
    assert time.monotonic() - t0 < 5, "the render was not stopped early"
    _check_failed_run(played, "a", case.reason)


@pytest.mark.parametrize("case", FAILING, ids=[c.label for c in FAILING])
async def test_a_failing_later_node_ends_the_run_failed_with_the_fallback(
    case: Failing, tmp_path: Path, redis_url: str
) -> None:
    flow = FLOW.format(fallback=f"fallback: {FALLBACK}\n", first="Hello", later=case.template)
    played = await _play(
        tmp_path, redis_url, flow, case.fields, f"> go\n< Hello\n> fine\n< {FALLBACK}\n= outcome: failed"
    )
    _check_failed_run(played, "b", case.reason)


async def test_without_a_fallback_the_run_fails_silently(tmp_path: Path, redis_url: str) -> None:
    flow = FLOW.format(fallback="", first="Hello", later=FAILING[0].template)
    played = await _play(
        tmp_path, redis_url, flow, FAILING[0].fields, "> go\n< Hello\n> fine\n= outcome: failed"
    )
    _check_failed_run(played, "b", "str")


async def test_a_contact_whose_data_fits_is_answered_as_usual(tmp_path: Path, redis_url: str) -> None:
    flow = FLOW.format(
        fallback=f"fallback: {FALLBACK}\n", first="'{{ contact.orders + 1 }} orders'", later="Bye"
    )
    await _play(tmp_path, redis_url, flow, {"orders": 2}, "> go\n< 3 orders\n> ok\n< Bye\n= outcome: done")


async def test_a_failure_in_a_flow_handed_off_to_fails_that_flow_only(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "switch.yaml").write_text(
        "name: switch\ntriggers: [switch]\nstart: a\nnodes:\n  a: {say: Switch now, wait: {}, default: b}\n"
        "  b: {say: Switching you over, start: t}\n"
    )
    flow = FLOW.format(fallback=f"fallback: {FALLBACK}\n", first=FAILING[0].template, later="Bye")
    played = await _play(
        tmp_path,
        redis_url,
        flow,
        FAILING[0].fields,
        f"> switch\n< Switch now\n> yes\n< {FALLBACK}\n= outcome: failed",
    )
    ended = {e["f"]: e for e in played.events if e["t"] == "ended"}
    assert ended["switch"]["outcome"] == "handed_off" and ended["switch"]["next"] == "t"
    assert ended["t"]["outcome"] == "failed" and ended["t"]["node"] == "a"
    assert played.dead == 0


async def test_the_fallback_is_in_the_contacts_language(tmp_path: Path, redis_url: str) -> None:
    fallback = "fallback:\n  en: Sorry!\n  es: ¡Lo sentimos!\n"
    flow = FLOW.format(fallback=fallback, first=FAILING[0].template, later="Bye")
    (tmp_path / "t.yaml").write_text(flow)
    played = await _play(
        tmp_path,
        redis_url,
        flow,
        {**FAILING[0].fields},
        "> go\n< ¡Lo sentimos!\n= outcome: failed",
        language="es",
    )
    assert played.dead == 0
