"""Loading a flow never stalls or crashes the process: hostile files are refused quickly with a
``file:line`` error (``parley flows validate`` exits 2, ``POST /v1/flows:reload`` answers 422),
graphs are walked without recursion, templates never fold into huge constants, and a reload
runs off the event loop so serving goes on meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from engine.app.runtime import Runtime
from engine.core.errors import FlowErrors
from engine.flows.limits import Limits
from engine.flows.loader import load_flow, parse_flow
from engine.flows.registry import FlowRegistry
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import API_KEY, make_config, run_parley

HEAD = "name: t\nstart: a\nnodes:\n"


def _chain(n: int) -> str:
    """A flow of ``n`` nodes, each going to the next."""
    body = "".join(f"  a{i}: {{say: hi, goto: a{i + 1}}}\n" for i in range(n - 1))
    return f"name: t\nstart: a0\nnodes:\n{body}  a{n - 1}: {{end: x}}\n"


def _laughs() -> str:
    """Ten lists of ten aliases of the list before: 10**10 words once expanded."""
    lists = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 10))
    return (
        f"name: t\nstart: a\nl0: &l0 [{', '.join(['lol'] * 10)}]\n{lists}"
        "nodes:\n  a:\n    wait: {}\n    cases: [{when: {any_word: *l9}, goto: a}]\n"
    )


@dataclass(frozen=True)
class Hostile:
    label: str
    text: Callable[[], str]
    line: int
    says: str


HOSTILE = [
    Hostile("a constant that folds to a gigabyte", lambda: HEAD + "  a:\n    say: \"{{ 'a' * 10**9 }}\"\n    end: x\n", 5, "too long"),
    Hostile("a constant filter that pads to a gigabyte", lambda: HEAD + "  a:\n    say: \"{{ 'a' | center(10**9) }}\"\n    end: x\n", 5, "too long"),
    Hostile("a constant power of a huge exponent", lambda: HEAD + "  a:\n    say: \"{{ 10 ** 1000000000 }}\"\n    end: x\n", 5, "too large"),
    Hostile("20,000 nested lists", lambda: HEAD + "  a: {end: x}\nx: " + "[" * 20000 + "]" * 20000 + "\n", 5, "nested deeper"),
    Hostile("3,000 nested template blocks", lambda: HEAD + "  a:\n    say: \"" + "{% if contact.number %}" * 3000 + "x" + "{% endif %}" * 3000 + "\"\n    end: x\n", 5, "nested too deeply"),
    Hostile("25 nested loops", lambda: HEAD + "  a:\n    say: \"" + "{% for i in contact.tags %}" * 25 + "x" + "{% endfor %}" * 25 + "\"\n    end: x\n", 5, "nested too deeply"),
    Hostile("20,000 nested parentheses", lambda: HEAD + "  a:\n    say: \"{{ " + "(" * 20000 + "1" + ")" * 20000 + " }}\"\n    end: x\n", 5, "nested too deeply"),
    Hostile("a 50,000-node goto chain", lambda: _chain(50_000), 1, "bytes"),
    Hostile("more nodes than the limit", lambda: _chain(1_001), 3, "1,001 nodes"),
    Hostile("a 50 MB file", lambda: HEAD + "  a: {say: '" + "x" * 50_000_000 + "', end: x}\n", 1, "bytes"),
    Hostile("a billion laughs", lambda: _laughs(), 8, "aliases expand"),
    Hostile("a message longer than 10 segments", lambda: HEAD + "  a: {say: '" + "word " * 400 + "', end: x}\n", 4, "segments"),
]  # fmt: skip


@pytest.mark.parametrize("case", HOSTILE, ids=[c.label for c in HOSTILE])
def test_a_hostile_flow_is_refused_quickly_with_file_and_line(case: Hostile, tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(case.text())
    t0 = time.monotonic()
    with pytest.raises(FlowErrors) as info:
        load_flow(path)
    took = time.monotonic() - t0
    hits = [e for e in info.value.errors if case.says in e.problem]
    assert hits, [str(e)[:300] for e in info.value.errors]
    assert hits[0].line == case.line and str(hits[0]).startswith(f"{path}:{case.line}:")
    assert len(str(hits[0])) < 400, "the error should be one readable line"
    assert took < 3, f"took {took:.1f} s"


def test_a_long_goto_chain_is_walked_without_recursion() -> None:
    flow = parse_flow(_chain(3_000), "t.yaml", limits=Limits(max_nodes=5_000))
    assert len(flow.nodes) == 3_000
    looping = _chain(3_000).replace("a2999: {end: x}", "a2999: {goto: a0}")
    with pytest.raises(FlowErrors, match="loops without waiting"):
        parse_flow(looping, "t.yaml", limits=Limits(max_nodes=5_000))


def test_the_shipped_flows_are_within_the_default_limits() -> None:
    assert FlowRegistry.from_dir(Path(__file__).parent.parent / "rules").flows


def test_flows_validate_exits_2_on_a_hostile_file(tmp_path: Path) -> None:
    bad = tmp_path / "deep.yaml"
    bad.write_text(HOSTILE[3].text())
    proc = run_parley("flows", "validate", str(bad))
    assert proc.returncode == 2, proc.stderr
    assert f"{bad}:5:" in proc.stderr and "Traceback" not in proc.stderr


async def test_reload_answers_422_for_every_hostile_file(
    redis_url: str, carrier: SimulatedCarrier, tmp_path: Path
) -> None:
    (tmp_path / "ok.yaml").write_text(HEAD + "  a: {say: hi, end: x}\n")
    cfg = make_config(
        redis_url,
        engine={"flows_dir": str(tmp_path)},
        gateways={"carrier": {"type": "http", "url": carrier.url}},
    )
    async with (
        Runtime(cfg) as rt,
        aiohttp.ClientSession(
            f"http://127.0.0.1:{rt.http_port}", headers={"Authorization": f"Bearer {API_KEY}"}
        ) as api,
    ):
        for case in HOSTILE[:8]:
            (tmp_path / "hostile.yaml").write_text(case.text().replace("name: t", "name: hostile"))
            async with api.post("/v1/flows:reload") as r:
                assert r.status == 422, (case.label, r.status, await r.text())
                problems = (await r.json())["error"]["problems"]
                assert any(f"hostile.yaml:{case.line}:" in p and case.says in p for p in problems), problems


async def test_healthz_answers_quickly_while_a_big_file_reloads(
    redis_url: str, carrier: SimulatedCarrier, tmp_path: Path
) -> None:
    (tmp_path / "ok.yaml").write_text(HEAD + "  a: {say: hi, end: x}\n")
    big = (
        "name: big\ndescription: '"
        + "lorem ipsum " * 400_000
        + "'\nstart: a\nnodes:\n  a: {say: hi, end: x}\n"
    )
    cfg = make_config(
        redis_url,
        engine={"flows_dir": str(tmp_path), "max_flow_bytes": 10_000_000},
        gateways={"carrier": {"type": "http", "url": carrier.url}},
    )
    async with (
        Runtime(cfg) as rt,
        aiohttp.ClientSession(
            f"http://127.0.0.1:{rt.http_port}", headers={"Authorization": f"Bearer {API_KEY}"}
        ) as api,
    ):
        (tmp_path / "big.yaml").write_text(big)
        reload = asyncio.ensure_future(api.post("/v1/flows:reload"))
        slowest, polls = 0.0, 0
        while not reload.done():
            t0 = time.monotonic()
            async with api.get("/healthz") as r:
                assert r.status == 200, await r.text()
            slowest = max(slowest, time.monotonic() - t0)
            polls += 1
            await asyncio.sleep(0.02)
        async with await reload as r:
            assert r.status == 200
        assert slowest < 0.5, f"/healthz took {slowest:.2f} s during the reload"
        assert polls >= 5, "the reload was too quick to tell"


#: Templates that would build gigabytes from a contact's data: each is stopped before it does.
GREEDY = [
    ("repeat a text", "{{ contact.x * 10**9 }}"),
    ("repeat a list", "{{ ([contact.x] * 10**9) | length }}"),
    ("a huge power", "{{ (contact.n ** 1000000000) | string | length }}"),
    ("pad with a filter", "{{ contact.x | center(10**9) }}"),
    ("pad with a method", "{{ contact.x.ljust(10**9) }}"),
    ("zero-fill", "{{ contact.x.zfill(10**9) }}"),
    ("a %-format width", "{{ '%999999999d' % contact.n }}"),
    ("a format() width", "{{ '{:>999999999}'.format(contact.n) }}"),
    ("the format filter", "{{ '%999999999d' | format(contact.n) }}"),
    ("join with a long separator", "{{ range(100000) | join(contact.x * 99999) }}"),
    ("join by method", "{{ (contact.x * 99999).join(range(100000) | map('string')) }}"),
    ("replace every gap", "{{ (contact.x * 99999) | replace('', contact.x * 99999) }}"),
    ("indent every line", "{{ (contact.nl * 99999) | indent(99999) }}"),
    ("doubling in a loop", "{% set ns = namespace(s=contact.x) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}"),
    ("a long loop of output", "{% for i in range(100000) %}{{ contact.x * 99999 }}{% endfor %}"),
    ("lipsum", "{{ lipsum(10**6) }}"),
    ("a %-format width from an argument", "{{ '%*d' % (10**9, contact.n) }}"),
    ("a format() width from an argument", "{{ '{0:{1}}'.format(contact.n, 10**9) }}"),
    ("a batch filled to a billion", "{{ contact.x | batch(10**9, '-') | list }}"),
    ("a billion slices", "{{ contact.x | slice(10**9) | list }}"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "source"), GREEDY, ids=[g[0] for g in GREEDY])
def test_a_template_is_stopped_before_it_builds_a_huge_value(label: str, source: str) -> None:
    from engine.core.errors import RenderError
    from engine.flows.templates import Template, make_environment

    tpl = Template(make_environment(), source)
    t0 = time.monotonic()
    with pytest.raises(RenderError):
        tpl.render({"contact": {"x": "ab", "n": 7, "nl": "a\n"}})
    assert time.monotonic() - t0 < 1, label


#: Ordinary templates the bounds must leave alone (long numbers in text, small widths).
MODEST = [
    ("a long number in a %-format", "{{ 'Call 0800123456 about %s' % contact.x }}", "Call 0800123456 about ab"),
    ("a long number in a format()", "{{ 'Order 12345678: {}'.format(contact.x) }}", "Order 12345678: ab"),
    ("a precision", "{{ '%.2f' | format(contact.n) }}", "7.00"),
    ("thousands", "{{ '{:,}'.format(contact.n * 1000000) }}", "7,000,000"),
    ("a list a few times", "{{ ([contact.x] * 3) | join('-') }}", "ab-ab-ab"),
    ("a page of text", "{{ (contact.x * 700) | length }}", "1400"),
    ("a big but fine number", "{{ contact.n ** 100 > 0 }}", "True"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "source", "shown"), MODEST, ids=[m[0] for m in MODEST])
def test_ordinary_templates_are_left_alone(label: str, source: str, shown: str) -> None:
    from engine.flows.templates import Template, make_environment

    assert Template(make_environment(), source).render({"contact": {"x": "ab", "n": 7}}) == shown
