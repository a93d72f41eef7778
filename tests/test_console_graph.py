"""The Flows page's graph (engine/console/graph.py): every node drawn once, every edge drawn
with its label, no two nodes on top of each other, and a flow's text shown as text, never as
markup, whatever it says."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.console import graph
from engine.flows import FlowRegistry
from engine.flows.loader import parse_flow
from engine.flows.model import Case, Flow, Node, Reprompt

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = FlowRegistry.from_dir(ROOT / "rules").flows
SVG = "{http://www.w3.org/2000/svg}"


def drawn(flow: Flow, **counts: dict[str, int]) -> ET.Element:
    """The SVG, parsed as XML (it must be well-formed: escaping is right)."""
    return ET.fromstring(str(graph.svg(flow, **counts)))


def assert_drawn_whole(flow: Flow) -> None:
    root = drawn(flow)
    nodes = Counter(g.get("data-node") for g in root.iter(f"{SVG}g") if g.get("data-node"))
    assert nodes == Counter(list(flow.nodes)), "every node exactly once"
    edges = Counter(
        (g.get("data-from"), g.get("data-to")) for g in root.iter(f"{SVG}g") if g.get("data-from")
    )
    expected = Counter((e.source, e.target) for n in flow.nodes.values() for e in graph.edges_of(n))
    assert edges == expected, "every edge drawn"
    boxes = list(graph.layout(flow).boxes.values())
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), f"{a.name} and {b.name} overlap"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_flow_is_drawn_whole_with_no_node_over_another(name: str) -> None:
    assert_drawn_whole(SHIPPED[name])


def test_reply_tests_timeouts_and_reprompts_are_labelled_edges() -> None:
    root = drawn(SHIPPED["appointment"])
    labels = {
        (g.get("data-from"), g.get("data-to"), g.get("class")): "".join(g.find(f"{SVG}title").itertext())  # type: ignore[union-attr]
        for g in root.iter(f"{SVG}g")
        if g.get("data-from")
    }
    assert labels[("remind", "nudge", "edge timeout")] == "remind → nudge: no reply in 4h"
    assert labels[("remind", "confirmed", "edge case")] == "remind → confirmed: yes → Confirm"
    assert labels[("remind", "no_answer", "edge reprompt")] == "remind → no_answer: no match, 2 reprompts"
    assert labels[("route", "cancel_check", "edge default")] == "route → cancel_check: otherwise"


def test_counts_of_waiting_and_dropped_contacts_show_on_their_node() -> None:
    root = drawn(SHIPPED["nps"], waiting={"ask_score": 1234}, dropped={"ask_score": 7})
    (ask,) = [g for g in root.iter(f"{SVG}g") if g.get("data-node") == "ask_score"]
    texts = ["".join(t.itertext()) for t in ask.iter(f"{SVG}text")]
    assert "1,234 waiting" in texts and "7 dropped" in texts
    others = [g for g in root.iter(f"{SVG}g") if g.get("data-node") not in (None, "ask_score")]
    assert not any("waiting" in "".join(g.itertext()) for g in others)


HOSTILE = """
name: hostile
start: ask
nodes:
  ask:
    say: "<script>alert('say')</script> & \\"quotes\\""
    wait: {save: x}
    cases:
      - {when: {phrase: "</text><script>alert('case')</script>"}, category: "<img src=x onerror=alert(1)>", goto: done}
    default: handoff_node
  handoff_node:
    say: "]]><svg onload=alert(2)>"
    handoff: needs_a_person
  done:
    say: ok
    end: done
"""


def test_a_hostile_flow_renders_its_text_as_text() -> None:
    flow = parse_flow(HOSTILE, "hostile.yaml")
    out = str(graph.svg(flow))
    assert "<script" not in out and "<img" not in out and "<svg onload" not in out
    root = ET.fromstring(out)  # still one well-formed SVG: nothing broke out of its element
    texts = " ".join("".join(t.itertext()) for t in root.iter(f"{SVG}text"))
    assert "<script>alert('say')</script>" in texts
    titles = " ".join("".join(t.itertext()) for t in root.iter(f"{SVG}title"))
    assert "<img src=x onerror=alert(1)>" in titles
    (handoff,) = [g for g in root.iter(f"{SVG}g") if g.get("data-node") == "handoff_node"]
    assert "handoff" in (handoff.get("class") or "")
    assert_drawn_whole(flow)


@st.composite
def flows(draw: st.DrawFn) -> Flow:
    """Any graph: 1-30 nodes, each with up to 4 cases to any node (loops, self-loops, long
    jumps), a default, a timeout, a reprompt's way out, or an end."""
    n = draw(st.integers(1, 30))
    names = [f"n{i}" for i in range(n)]
    target = st.sampled_from(names)
    nodes = {}
    for i, name in enumerate(names):
        gotos = draw(st.lists(target, max_size=4))
        node = Node(
            name, line=i + 1, cases=[Case(g, "c", i + 1, label=f"case {k}") for k, g in enumerate(gotos)]
        )
        if draw(st.booleans()):
            node.default = draw(target)
        if draw(st.booleans()):
            node.timeout, node.timeout_goto = 3600.0, draw(target)
        if draw(st.booleans()):
            node.reprompt = Reprompt({}, 1, draw(target))
        if not (node.cases or node.default or node.timeout_goto):
            node.end = "done"
        node.wait = bool(node.cases or node.default)
        nodes[name] = node
    return Flow("random", 1, "random.yaml", draw(target), nodes)


@settings(max_examples=60, deadline=None)
@given(flows())
def test_any_flow_is_drawn_whole_with_no_node_over_another(flow: Flow) -> None:
    assert_drawn_whole(flow)
    lay = graph.layout(flow)
    for box in lay.boxes.values():
        assert box.x >= 0 and box.x + graph.NODE_W <= lay.width
        assert box.y >= 0 and box.y + graph.NODE_H <= lay.height
