"""Drawing a flow: a text tree for the terminal, Mermaid for documentation."""

from __future__ import annotations

import re

from engine.flows.model import Flow, Node

_TAG = re.compile(r"\{%.*?%\}")
_EXPR = re.compile(r"\{\{\s*([\w.\[\]]+)[^}]*\}\}")


def say_text(node: Node, width: int = 60) -> str:
    """The first words of what a node says, with template syntax reduced to ``{contact.x}``."""
    if not node.say:
        return ""
    src = next(iter(node.say.values())).source
    src = " ".join(_EXPR.sub(r"{\1}", _TAG.sub("", src)).split())
    return src if len(src) <= width else src[: width - 1] + "…"


def _edges(node: Node) -> list[tuple[str, str]]:
    """(label, target) for every way out of a node; target "end: x" for exits."""
    out = [(f"{c.label} ({c.category})" if c.category != c.goto else c.label, c.goto) for c in node.cases]
    if node.default:
        out.append(("otherwise" if node.cases else "any reply", node.default))
    if node.reprompt:
        after = node.reprompt.after or "end: unanswered"
        out.append((f"no match, after {node.reprompt.max} reprompt(s)", after))
    if node.timeout_goto:
        out.append((f"no reply in {_duration(node.timeout or 0)}", node.timeout_goto))
    if node.goto:
        out.append(("then", node.goto))
    if node.end:
        out.append(("", f"end: {node.end}"))
    if node.start_flow:
        out.append(("", f"start flow: {node.start_flow}"))
    if node.handoff:
        out.append(("", f"handoff: {node.handoff}"))
    if node.call:
        out.append((f"{node.call.method} answered", node.call.success))
        out.append((f"failed or no answer in {_duration(node.call.timeout)}", node.call.failure))
    return out


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def text(flow: Flow) -> str:
    """The flow as an indented tree, nodes in file order."""
    lines = [f"{flow.name} v{flow.version}: {flow.description}".rstrip(": ")]
    if flow.triggers:
        lines.append(f"  triggers: {', '.join(flow.triggers)}; expires after {_duration(flow.expire_after)}")
    for node in sorted(flow.nodes.values(), key=lambda n: n.line):
        kind = "wait" if node.wait else "route" if node.cases else "call" if node.call else "step"
        head = f"{'*' if node.name == flow.start else ' '} {node.name} [{kind}]"
        if node.save:
            head += f" saves {node.save}"
        if node.sets or node.tags:
            head += " sets " + ", ".join([*node.sets, *(f"#{t}" for t in node.tags)])
        lines.append(head)
        if node.say:
            lines.append(f"      says: {say_text(node)}")
        edges = _edges(node)
        for i, (label, target) in enumerate(edges):
            branch = "└─" if i == len(edges) - 1 else "├─"
            lines.append(f"      {branch} {label + ' -> ' if label else ''}{target}")
    return "\n".join(lines)


def mermaid(flow: Flow) -> str:
    """The flow as a Mermaid flowchart (paste into Markdown inside a ```mermaid block)."""

    def q(s: str) -> str:
        return s.replace('"', "'")

    lines = ["flowchart TD"]
    exits: dict[str, str] = {}
    for node in sorted(flow.nodes.values(), key=lambda n: n.line):
        label = f"{node.name}: {say_text(node, 40)}" if node.say else node.name
        shape = ('{{"', '"}}') if node.cases and not node.wait else ('["', '"]')
        lines.append(f"  {node.name}{shape[0]}{q(label)}{shape[1]}")
        for edge_label, target in _edges(node):
            if target.startswith(("end: ", "start flow: ")):
                exits.setdefault(target, f"exit_{len(exits)}")
                target_id = exits[target]
            else:
                target_id = target
            arrow = f' -->|"{q(edge_label)}"| ' if edge_label else " --> "
            lines.append(f"  {node.name}{arrow}{target_id}")
    for text_, ident in exits.items():
        lines.append(f'  {ident}(["{q(text_)}"])')
    return "\n".join(lines)
