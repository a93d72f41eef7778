"""Properties of every shipped flow, under random replies, timeouts and missing contact data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.flows import FlowRegistry, call_result, expire, resume, start, timeout
from tests.conftest import ROOT
from tests.test_transcripts import FILES, parse

REGISTRY = FlowRegistry.from_dir(ROOT / "rules")
#: Realistic contact data per flow: the fields its transcripts use.
FIELDS: dict[str, dict[str, Any]] = {}
for _path in FILES:
    _t = parse(_path)
    FIELDS.setdefault(_t.header["flow"], {}).update(_t.fields)

#: Replies people send: numbers, words the flows listen for, junk, emoji, empty.
replies = st.one_of(
    st.sampled_from(["1", "2", "3", "5", "9", "10", "yes", "no", "YES!", "nope", "rebook", "cancel",
                     "tomorrow", "Friday", "2pm", "25/12", "meh", "", " ", "👍", "stop"]),
    st.text(max_size=30),
)  # fmt: skip
actions = st.lists(st.one_of(replies, st.just("~timeout"), st.just("~expire")), min_size=1, max_size=10)
#: What a CRM answers a flow's call with (ok, answer): full, empty, an error.
CRM_ANSWERS = [
    (
        True,
        {"status": "approved", "eta": "2026-11-24", "url": "https://r.example.com/x", "sent_to": "a***@x"},
    ),
    (True, {}),
    (False, {"error": "HTTP 500"}),
]


def _outcomes(flow_name: str) -> set[str]:
    flow = REGISTRY.flows[flow_name]
    return {n.end for n in flow.nodes.values() if n.end} | {"unanswered", "expired"}


@pytest.mark.parametrize("flow_name", sorted(REGISTRY.flows))
@settings(max_examples=150, deadline=None)
@given(data=st.data(), steps=actions)
def test_no_input_crashes_a_flow_and_every_turn_waits_or_ends(
    flow_name: str, data: st.DataObject, steps: list[str]
) -> None:
    flow = REGISTRY.flows[flow_name]
    known = FIELDS.get(flow_name, {})
    # Any optional data may be missing; the fields a flow requires are there (the engine does
    # not start a flow for a contact without them).
    keep = data.draw(st.sets(st.sampled_from(sorted(known))) if known else st.just(set())) | set(flow.fields)
    contact = {k: v for k, v in known.items() if k in keep} | {"number": "+447700900123", "tags": []}
    now = 1_767_225_600_000
    d = start(flow, dict(contact), {}, now)
    outcomes = _outcomes(flow_name)
    for step in steps:
        _check(flow_name, d, outcomes)
        if not d.active:
            break
        now += 60_000
        node = flow.nodes[d.state["n"]]
        if node.call is not None:  # waiting on the CRM: this step is its answer instead
            ok, answer = CRM_ANSWERS[len(step) % len(CRM_ANSWERS)]
            d = call_result(flow, d.state, dict(contact), ok, answer, now)
        elif step == "~timeout":
            if node.timeout_goto is None:
                continue
            d = timeout(flow, d.state, dict(contact), now)
        elif step == "~expire":
            d = expire(d.state, now)
        else:
            d = resume(flow, d.state, dict(contact), step, now)
    _check(flow_name, d, outcomes)


def _check(flow_name: str, d: Any, outcomes: set[str]) -> None:
    flow = REGISTRY.flows[flow_name]
    if d.active:
        node = flow.nodes.get(d.state["n"])
        assert node is not None and (node.wait or node.call is not None)
    else:
        assert d.state["o"] in outcomes
    for m in d.messages:
        assert m.strip(), "an empty message"
        assert "{{" not in m and "{%" not in m
        assert not any(bad in m for bad in (" ,", ", .", "  ", " .", "()")), m


def test_every_shipped_flow_has_contact_data_to_test_with() -> None:
    assert set(REGISTRY.flows) == {Path(p).stem for p in (ROOT / "rules").glob("*.yaml")}
