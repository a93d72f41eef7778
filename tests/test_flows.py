"""Flows as their authors and customers meet them: a broken file is refused with file:line and
the node, reply tests read replies as people write them, and the NPS survey talks sensibly to
anyone, whatever they reply."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.errors import FlowErrors
from engine.flows import Decision, FlowRegistry, load_flow, resume, start
from engine.flows.loader import parse_flow
from engine.flows.reply_tests import compile_test
from engine.flows.runner import template_context
from engine.flows.text import Reply

ROOT = Path(__file__).resolve().parent.parent
NPS = load_flow(ROOT / "rules/nps.yaml")
NOW = 1_767_225_600_000
OUTCOMES = {"completed", "unanswered"}


# --- broken flows -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Broken:
    label: str
    yaml: str
    line: int
    node: str | None
    says: str


HEAD = "name: t\nstart: a\nnodes:\n"
WAIT = HEAD + "  a:\n    wait: {}\n    cases:\n"  # the case itself is on line 7
BROKEN = [
    Broken("case goes to a missing node", WAIT + "      - {when: yes, goto: nowhere}\n", 4, "a", "goes to 'nowhere', which is not a node"),
    Broken("typo in a node key", HEAD + "  a:\n    sya: hi\n    end: done\n", 5, "a", "unknown key 'sya'"),
    Broken("start names a missing node", "name: t\nstart: b\nnodes:\n  a: {end: x}\n", 2, None, "start names 'b'"),
    Broken("unreachable node", HEAD + "  a: {end: x}\n  b: {end: y}\n", 5, "b", "unreachable"),
    Broken("goto loop that never waits", HEAD + "  a: {goto: b}\n  b: {goto: a}\n", 4, "a", "loops without waiting for a reply: a -> b -> a"),
    Broken("unknown reply test", WAIT + "      - {when: {numbr: [1, 2]}, goto: a}\n", 7, "a", "unknown test 'numbr'"),
    Broken("number_between low above high", WAIT + "      - {when: {number_between: [10, 0]}, goto: a}\n", 7, "a", "low 10 is above high 0"),
    Broken("regex that does not compile", WAIT + "      - {when: {regex: '(oops'}, goto: a}\n", 7, "a", "does not compile"),
    Broken("template syntax error", HEAD + "  a:\n    say: 'Hi {{ contact.name '\n    end: x\n", 5, "a", "template syntax"),
    Broken("template syntax error in a block", HEAD + "  a:\n    say: |\n      Hi\n      {{ contact.name\n    end: x\n", 7, "a", "template syntax"),
    Broken("waiting node with nowhere to go", HEAD + "  a:\n    say: hi\n    wait: {}\n", 4, "a", "needs cases or a default"),
    Broken("duplicate YAML key", HEAD + "  a: {end: x}\n  a: {end: y}\n", 5, None, "'a' appears twice"),
    Broken("tab in the indentation", HEAD + "  a:\n\tend: x\n", 5, None, "invalid YAML"),
    Broken("indentation that goes back", HEAD + "  a:\n    say: hi\n   end: x\n", 6, None, "invalid YAML"),
    Broken("goto and end on one node", HEAD + "  a: {goto: b, end: x}\n  b: {end: y}\n", 4, "a", "exactly one of"),
    Broken("handoff reason that is not a name", HEAD + "  a:\n    say: hi\n    handoff: Needs Person\n", 6, "a", "handoff must name a reason for the inbox in lower_snake_case"),
    Broken("handoff and end on one node", HEAD + "  a: {handoff: person, end: x}\n", 4, "a", "exactly one of"),
]  # fmt: skip


@pytest.mark.parametrize("case", BROKEN, ids=[c.label for c in BROKEN])
def test_broken_flow_is_refused_once_with_file_line_and_node(case: Broken) -> None:
    with pytest.raises(FlowErrors) as info:
        parse_flow(case.yaml, "t.yaml")
    errors = info.value.errors
    # One mistake, one problem: no follow-on complaints about things the author did write.
    assert len(errors) == 1, [str(e) for e in errors]
    (err,) = errors
    assert (err.line, err.node) == (case.line, case.node), str(err)
    assert case.says in err.problem
    assert str(info.value).startswith(f"t.yaml:{case.line}:")


def test_every_problem_in_a_file_is_reported_together() -> None:
    text = (
        "name: t\nstart: a\nnodes:\n"
        "  a:\n    sya: hi\n    goto: b\n"
        "  b:\n    wait: {}\n    cases:\n      - {when: {numbr: 1}, goto: c}\n"
        "  c: {end: x}\n"
        "  d:\n    say: '{{ oops '\n    end: y\n"
    )
    with pytest.raises(FlowErrors) as info:
        parse_flow(text, "t.yaml")
    found = {(e.line, e.node) for e in info.value.errors}
    assert len(info.value.errors) >= 2
    assert {(5, "a"), (10, "b"), (13, "d")} <= found, str(info.value)
    assert len(str(info.value).splitlines()) == len(info.value.errors)


def test_a_directory_with_one_trigger_in_two_flows_is_refused(tmp_path: Path) -> None:
    for name, trigger in (("first", "hello"), ("second", "Hello")):
        (tmp_path / f"{name}.yaml").write_text(
            f"name: {name}\ntriggers: [{trigger}]\nstart: a\nnodes:\n  a: {{say: hi, end: x}}\n"
        )
    with pytest.raises(FlowErrors) as info:
        FlowRegistry.from_dir(tmp_path)
    assert any("trigger 'hello'" in e.problem for e in info.value.errors), str(info.value)


def test_the_shipped_rules_load_and_nps_answers_its_keyword() -> None:
    registry = FlowRegistry.from_dir(ROOT / "rules")
    assert "nps" in registry.flows
    found = registry.by_trigger("NPS!")
    assert found is not None and found.name == "nps"


# --- reply tests ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyCase:
    label: str
    when: Any
    text: str
    value: object  # None: no match


ZERO_TEN = {"number_between": [0, 10]}
REPLIES = [
    ReplyCase("plain number", ZERO_TEN, "9", 9),
    ReplyCase("number with spaces and a bang", ZERO_TEN, " 9! ", 9),
    ReplyCase("score out of ten", ZERO_TEN, "9/10", 9),
    ReplyCase("number in words", ZERO_TEN, "nine", 9),
    ReplyCase("decimal", ZERO_TEN, "8.5", 8.5),
    ReplyCase("number in a sentence", ZERO_TEN, "I'd say 7", 7),
    ReplyCase("above the range", ZERO_TEN, "11", None),
    ReplyCase("above the range in words", ZERO_TEN, "eleven", None),
    ReplyCase("empty reply", ZERO_TEN, "", None),
    ReplyCase("no number at all", ZERO_TEN, "great", None),
    ReplyCase("yes capitalised", "yes", "Yes", True),
    ReplyCase("yeah with a bang", "yes", "yeah!", True),
    ReplyCase("ok thumbs up", "yes", "ok 👍", True),
    ReplyCase("Y", "yes", "Y", True),
    ReplyCase("no is not yes", "yes", "no", None),
    ReplyCase("not sure is not yes", "yes", "not sure", None),
    ReplyCase("nope", "no", "nope", False),
    ReplyCase("no thanks", "no", "No thanks", False),
    ReplyCase("accented keyword, plain reply", {"any_word": ["Café"]}, "cafe", "cafe"),
    ReplyCase("plain keyword, accented reply", {"any_word": ["cafe"]}, " Le CAFÉ! ", "Le CAFÉ!"),
    ReplyCase("phrase in any case", {"phrase": "call me"}, "please CALL me today", "please CALL me today"),
    ReplyCase("phrase inside other words", {"phrase": "call me"}, "recall meat", None),
    ReplyCase("regex group is the value", {"regex": r"order (\d+)"}, "Order 12345 please", "12345"),
    ReplyCase("regex without a match", {"regex": r"order (\d+)"}, "no order yet", None),
]


@pytest.mark.parametrize("case", REPLIES, ids=[c.label for c in REPLIES])
def test_reply_tests_read_replies_as_people_write_them(case: ReplyCase) -> None:
    match = compile_test(case.when)(Reply(case.text))
    if case.value is None:
        assert match is None
    else:
        assert match is not None
        assert match.value == case.value
        assert type(match.value) is type(case.value)  # 9 is saved as 9, not 9.0


# --- the NPS survey ---------------------------------------------------------------------------


def drive(contact: dict[str, Any], replies: list[str]) -> list[Decision]:
    decisions = [start(NPS, contact, {}, NOW)]
    for text in replies:
        decisions.append(resume(NPS, decisions[-1].state, contact, text, NOW + 1000))
    return decisions


@pytest.mark.parametrize(
    ("contact", "greeting"),
    [({"first_name": "ann marie"}, "Hi Ann, "), ({}, "Hi there, "), ({"first_name": " "}, "Hi there, ")],
    ids=["first name only", "no name", "blank name"],
)
def test_the_survey_greets_by_first_name_or_not_at_all(contact: dict[str, Any], greeting: str) -> None:
    (first,) = start(NPS, contact, {}, NOW).messages
    assert first.startswith(greeting)
    assert "thanks for choosing us." in first


def test_a_promoter_is_asked_why_and_thanked_with_their_score() -> None:
    _, scored, done = drive({"first_name": "ann"}, ["9", "Great service"])
    assert scored.messages == ["Wonderful, thank you! What do you like most about us?"]
    assert scored.state["r"]["nps_score"]["v"] == 9
    assert scored.state["r"]["nps_score"]["c"] == "promoter"
    assert scored.active
    assert done.messages == ["Thank you Ann! Your 9/10 and your comments help us get better."]
    assert done.outcome == "completed" and not done.active
    assert done.state["r"]["reason"]["t"] == "Great service"


def test_junk_is_reprompted_twice_then_the_survey_gives_up() -> None:
    _, first, second, third = drive({}, ["great", "??", "dunno"])
    sorry = ["Sorry, please reply with a number from 0 to 10."]
    assert first.messages == sorry and first.active
    assert second.messages == sorry and second.active
    assert third.messages == [] and third.outcome == "unanswered" and not third.active


@pytest.mark.parametrize(
    "contact", [{}, {"first_name": ""}, {"first_name": "123"}], ids=["missing", "empty", "no letters"]
)
def test_a_detractor_without_a_name_gets_clean_wording(contact: dict[str, Any]) -> None:
    _, sorry, thanks = drive(contact, ["3", "slow"])
    assert sorry.messages == ["We're sorry to hear that. What went wrong?"]
    assert thanks.messages == [
        "Thank you for telling us. Someone from our team will look into it and may get in touch."
    ]
    for text in sorry.messages + thanks.messages:
        assert ", ," not in text and " ," not in text and " ." not in text


CONTACTS = [{}, {"first_name": "ann marie"}, {"first_name": "", "company": "Acme"}]


@settings(max_examples=300, deadline=None)
@given(replies=st.lists(st.text(), min_size=1, max_size=8), contact=st.sampled_from(CONTACTS))
def test_no_sequence_of_replies_breaks_the_survey(replies: list[str], contact: dict[str, Any]) -> None:
    decision = start(NPS, dict(contact), {}, NOW)
    seen = [decision]
    for text in replies:
        if not decision.active:
            break
        decision = resume(NPS, decision.state, dict(contact), text, NOW + 1000)
        seen.append(decision)
    for d in seen:
        assert all(isinstance(m, str) and m and "{{" not in m for m in d.messages), d.messages
        if d.active:
            assert d.state["n"] in NPS.nodes
        else:
            assert d.outcome in OUTCOMES and d.state["o"] == d.outcome


@settings(max_examples=300, deadline=None)
@given(
    contact=st.fixed_dictionaries({}, optional={"first_name": st.text(), "company": st.text()}),
    score=st.integers(0, 10),
)
def test_every_nps_message_renders_for_any_contact(contact: dict[str, Any], score: int) -> None:
    ctx = template_context(contact, {"r": {"nps_score": {"v": score, "c": "x", "t": str(score)}}})
    for node in NPS.nodes.values():
        variants = list((node.say or {}).values())
        variants += list(node.reprompt.say.values()) if node.reprompt else []
        for tpl in variants:
            assert tpl.render(ctx).strip()
    greeting = NPS.nodes["ask_score"].say[""].render(ctx)  # type: ignore[index]
    if "first_name" not in contact:
        assert greeting.startswith("Hi there, ")
    if "company" not in contact:
        assert "thanks for choosing us." in greeting
