"""Flows: refused with file:line when broken, reply tests read replies as people write them,
and no reply ever crashes a conversation."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.errors import FlowErrors
from engine.flows import FlowRegistry, load_flow, resume, start
from engine.flows.loader import parse_flow
from engine.flows.reply_tests import compile_test
from engine.flows.text import Reply
from tests.conftest import ROOT

NPS = load_flow(ROOT / "rules/nps.yaml")


@dataclass(frozen=True)
class Broken:
    label: str
    yaml: str
    line: int
    node: str | None
    says: str


HEAD = "name: t\nstart: a\nnodes:\n"
BROKEN = [
    Broken("goto to a missing node", HEAD + "  a:\n    say: hi\n    goto: nowhere\n", 4, "a", "'nowhere', which is not a node"),
    Broken("typo in a node key", HEAD + "  a:\n    sya: hi\n    end: done\n", 5, "a", "unknown key 'sya'"),
    Broken("start names no node", "name: t\nstart: b\nnodes:\n  a: {end: x}\n", 2, None, "start names 'b'"),
    Broken("unreachable node", HEAD + "  a: {end: x}\n  b: {end: y}\n", 5, "b", "unreachable"),
    Broken("loop without waiting", HEAD + "  a: {goto: b}\n  b: {goto: a}\n", 4, "a", "loops without waiting"),
    Broken("unknown reply test", HEAD + "  a:\n    wait: {}\n    cases:\n      - {when: {numbr: [1, 2]}, goto: a}\n", 7, "a", "unknown test 'numbr'"),
    Broken("range upside down", HEAD + "  a:\n    wait: {}\n    cases:\n      - {when: {number_between: [10, 0]}, goto: a}\n", 7, "a", "low 10 is above high 0"),
    Broken("regex that does not compile", HEAD + "  a:\n    wait: {}\n    cases:\n      - {when: {regex: '(unclosed'}, goto: a}\n", 7, "a", "does not compile"),
    Broken("template syntax", HEAD + "  a:\n    say: 'Hi {{ contact.name '\n    end: x\n", 5, "a", "template syntax"),
    Broken("wait with nowhere to go", HEAD + "  a:\n    say: hi\n    wait: {}\n", 4, "a", "needs cases or a default"),
    Broken("goto and end together", HEAD + "  a: {goto: a, end: x}\n", 4, "a", "exactly one of"),
    Broken("duplicate key", HEAD + "  a: {end: x}\n  a: {end: y}\n", 5, None, "appears twice"),
    Broken("bad YAML", "name: t\nstart: a\nnodes:\n  a: {end: x\n", 5, None, "invalid YAML"),
    Broken("typo in a contact field", HEAD + "  a:\n    say: |-\n      Hi\n      {{ contact.frist_name }}\n    end: x\n", 7, "a", "uses contact.frist_name, which the flow does not require"),
    Broken("field used in a set without a default", HEAD + "  a:\n    set:\n      x: '{{ contact.y }}'\n    end: x\n", 6, "a", "uses contact.y"),
    Broken("fallback that is a template", "name: t\nfallback: 'Sorry {{ contact.first_name }}'\nstart: a\nnodes:\n  a: {end: x}\n", 2, None, "fallback must be plain text"),
    Broken("fallback that is not text", "name: t\nfallback: [a, b]\nstart: a\nnodes:\n  a: {end: x}\n", 2, None, "fallback must be text"),
    Broken("fallback over 10 segments", "name: t\nfallback: '" + "sorry " * 300 + "'\nstart: a\nnodes:\n  a: {end: x}\n", 2, None, "segments"),
    Broken("template that fails for everyone", HEAD + "  a:\n    say: '{{ range(10**9) | list }}'\n    end: x\n", 5, "a", "fails for every contact"),
]  # fmt: skip


@pytest.mark.parametrize("case", BROKEN, ids=[c.label for c in BROKEN])
def test_broken_flow_is_refused_with_file_line_and_node(case: Broken) -> None:
    with pytest.raises(FlowErrors) as info:
        parse_flow(case.yaml, "rules/t.yaml")
    hits = [e for e in info.value.errors if case.says in e.problem]
    assert hits, [str(e) for e in info.value.errors]
    assert hits[0].line == case.line and hits[0].node == case.node
    assert str(hits[0]).startswith(f"rules/t.yaml:{case.line}:")


def test_a_required_field_or_a_guard_makes_a_contact_field_acceptable() -> None:
    text = "name: t\nfields: [first_name]\nstart: a\nnodes:\n  a:\n    say: '{{ contact.first_name }} {{ contact.company | default(\"\") }} {{ contact.number }}'\n    end: x\n"
    assert parse_flow(text, "t.yaml").fields == ["first_name"]


@pytest.mark.parametrize(
    ("raw", "shown"),
    [("ann marie", "Ann"), ("ANN", "Ann"), ("McDonald", "McDonald"), ("jean-luc", "Jean-Luc"), (".A", "A"),
     ("...", "there"), ('"Bob"', "Bob"), (" 123 ", "there"), ("", "there")],
)  # fmt: skip
def test_first_name_filter(raw: str, shown: str) -> None:
    from engine.flows.templates import Template, make_environment

    assert Template(make_environment(), '{{ n | first_name | default("there") }}').render({"n": raw}) == shown


def test_every_problem_in_a_file_is_reported_at_once() -> None:
    text = HEAD + "  a:\n    sya: hi\n    goto: nowhere\n  b:\n    wait: {}\n"
    with pytest.raises(FlowErrors) as info:
        parse_flow(text, "t.yaml")
    assert len(info.value.errors) >= 3


@dataclass(frozen=True)
class Said:
    label: str
    when: object
    reply: str
    value: object  # None: must not match


SAID = [
    Said("plain number", {"number_between": [0, 10]}, "9", 9),
    Said("number with noise", {"number_between": [0, 10]}, " 9! ", 9),
    Said("out of ten", {"number_between": [0, 10]}, "9/10", 9),
    Said("number word", {"number_between": [0, 10]}, "Nine", 9),
    Said("decimal", {"number_between": [0, 10]}, "8.5", 8.5),
    Said("number in a sentence", {"number_between": [0, 10]}, "I'd say 7 really", 7),
    Said("out of range", {"number_between": [0, 10]}, "11", None),
    Said("no number", {"number_between": [0, 10]}, "great", None),
    Said("empty", {"number_between": [0, 10]}, "", None),
    Said("less than", {"number_less": 5}, "3", 3),
    Said("yes word", "yes", "Yeah!", True),
    Said("yes emoji", "yes", "ok 👍", True),
    Said("single y", "yes", "Y", True),
    Said("no is not yes", "yes", "no", None),
    Said("mixed is neither", "yes", "yes no", None),
    Said("nope", "no", "Nope", False),
    Said("any word with accents", {"any_word": ["cafe", "tea"]}, "A Café please", "A Café please"),
    Said("all words", {"all_words": ["fast", "cheap"]}, "cheap and FAST", "cheap and FAST"),
    Said("all words missing one", {"all_words": ["fast", "cheap"]}, "fast", None),
    Said("phrase", {"phrase": "call me"}, "please CALL me today", "please CALL me today"),
    Said("phrase needs whole words", {"phrase": "call me"}, "recall meat", None),
    Said("regex group", {"regex": r"order (\w+)"}, "Where is order A1042?", "A1042"),
    Said("anything", "anything", " hi ", "hi"),
    Said("anything but blank", "anything", "   ", None),
    Said("Arabic-Indic digit", {"number_between": [0, 10]}, "٩", 9),
    Said("Devanagari digits", {"number_between": [0, 10]}, "१०", 10),
    Said("fullwidth digit", {"number_between": [0, 10]}, "\uff19", 9),
    Said("a digit that is not a decimal", {"number_between": [0, 10]}, "᧚", None),
    Said("a Kharoshthi digit", {"number_between": [0, 10]}, "𐩀", None),
    Said("5,000 digits are no score", {"number_between": [0, 10]}, "9" * 5000, None),
    Said("choice by an Arabic-Indic digit", {"choice": ["Confirm", "Rebook", "Cancel"]}, "٢", "Rebook"),
    Said("choice by a digit that is not a decimal", {"choice": ["Confirm", "Rebook", "Cancel"]}, "᧚", None),
    Said("choice by a Kharoshthi digit", {"choice": ["Confirm", "Rebook", "Cancel"]}, "𐩀", None),
    Said("choice by 5,000 digits", {"choice": ["Confirm", "Rebook", "Cancel"]}, "1" * 5000, None),
    Said("date in Arabic-Indic digits", "date", "٢٥/١٢", "2026-12-25"),
    Said("time in Devanagari digits", "time", "१५:३०", "15:30"),
]


@pytest.mark.parametrize("case", SAID, ids=[c.label for c in SAID])
def test_reply_tests_read_replies_as_people_write_them(case: Said) -> None:
    m = compile_test(case.when)(Reply(case.reply))
    if case.value is None:
        assert m is None
    else:
        assert m is not None and m.value == case.value and type(m.value) is type(case.value)


@pytest.mark.parametrize(
    ("contact", "greeting"),
    [({"first_name": "ann marie"}, "Hi Ann,"), ({}, "Hi there,"), ({"first_name": "  "}, "Hi there,")],
    ids=["first name", "no name", "blank name"],
)
def test_greeting_uses_the_first_name_or_a_default(contact: dict[str, str], greeting: str) -> None:
    assert start(NPS, contact, {}, 0).messages[0].startswith(greeting)


def test_reprompts_then_ends_unanswered() -> None:
    d = start(NPS, {}, {}, 0)
    for _ in range(2):
        d = resume(NPS, d.state, {}, "what?", 1)
        assert d.messages == ["Sorry, please reply with a number from 0 to 10."] and d.active
    d = resume(NPS, d.state, {}, "what?", 2)
    assert d.messages == [] and d.outcome == "unanswered" and not d.active


@settings(max_examples=300, deadline=None)
@given(
    replies=st.lists(st.text(max_size=40), min_size=1, max_size=8),
    contact=st.fixed_dictionaries(
        {}, optional={"first_name": st.text(max_size=20), "company": st.text(max_size=20)}
    ),
)
def test_no_reply_crashes_the_flow_and_every_turn_waits_or_ends(
    replies: list[str], contact: dict[str, str]
) -> None:
    d = start(NPS, contact, {}, 0)
    for i, text in enumerate(replies):
        if not d.active:
            break
        d = resume(NPS, d.state, contact, text, i + 1)
        assert d.active or d.outcome in {"completed", "unanswered"}
        if d.active:
            assert d.state["n"] in NPS.nodes
        for m in d.messages:
            assert m.strip() and "{{" not in m
            assert not any(bad in m for bad in (" ,", ", .", "Hi !", "you !")), m


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "rules").glob("*.yaml")))
def test_graph_draws_every_node_and_every_way_out(name: str) -> None:
    from engine.flows import graph

    flow = load_flow(ROOT / "rules" / f"{name}.yaml")
    tree, chart = graph.text(flow), graph.mermaid(flow)
    for node in flow.nodes.values():
        assert f" {node.name} [" in tree
        for target in node.successors():
            assert f"-> {target}" in tree
            assert f"| {target}" in chart or f"--> {target}" in chart
        if node.end:
            assert f"end: {node.end}" in tree and f'(["end: {node.end}"])' in chart
    assert tree.count("\n* ") + tree.startswith("* ") == 1  # exactly one start marker


def test_graph_cli_refuses_an_unknown_flow() -> None:
    from tests.conftest import run_parley

    proc = run_parley("flows", "graph", "nope")
    assert proc.returncode == 1 and "no flow 'nope'" in proc.stderr
    ok = run_parley("flows", "graph", "nps", "--mermaid")
    assert ok.returncode == 0 and ok.stdout.startswith("flowchart TD")


@pytest.mark.parametrize("empty", [None, "", []], ids=["null", "empty text", "empty list"])
def test_an_empty_crm_value_counts_as_missing(empty: object) -> None:
    from engine.core.contacts import Contact

    view = Contact("+447700900123", {"first_name": empty, "company": empty}).template_view()
    assert start(NPS, view, {}, 0).messages[0].startswith("Hi there, thanks for choosing us.")


#: Every reply test of every shipped flow, labelled ``flow.node#case``.
SHIPPED_TESTS = {
    f"{flow.name}.{node.name}#{i}": case.test
    for flow in FlowRegistry.from_dir(ROOT / "rules").flows.values()
    for node in flow.nodes.values()
    for i, case in enumerate(node.cases)
    if case.test is not None
}
#: Text as it may arrive: any Unicode, digits of every script, runs of digits past int()'s limit.
hostile_text = st.one_of(
    st.text(max_size=60),
    st.text(st.characters(categories=["Nd", "No", "Nl"]), max_size=20),
    st.builds(lambda d, n, tail: d * n + tail, st.characters(categories=["Nd", "No"]),
              st.integers(1, 6000), st.text(max_size=5)),
    st.sampled_from(["᧚", "𐩀", "1" * 4301, "٢٥/١٢", "9/10", "1e999", "-0", "+3", "²"]),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(text=hostile_text)
def test_no_text_crashes_any_reply_test_of_a_shipped_flow(text: str) -> None:
    for label, test in SHIPPED_TESTS.items():
        m = test(Reply(text, timezone="Europe/London", contact_number="+447700900123"))
        if m is not None and isinstance(m.value, float):
            assert m.value == m.value and abs(m.value) < 1e16, (label, m.value)
