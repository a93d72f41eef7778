"""Reading, validating and compiling flow files (a node's own grammar: engine/flows/nodes.py).

Validation collects every problem in a file before giving up, and each problem names the file,
the line and the node, so that ``parley flows validate`` is a to-do list rather than a guessing
game. Checked: the YAML itself, unknown and missing keys, references to nodes that do not exist,
nodes nothing reaches, loops that never wait for the customer, reply tests and their arguments,
template syntax, and nodes with nowhere to go. Bounded (engine/flows/limits.py): the file's
size, its nesting, its node count, the nesting of its templates and the length of its messages,
so a hostile file is refused quickly instead of stalling or crashing the process that loads it;
the graph walks are iterative for the same reason.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import jinja2
import yaml

from engine.core.config import parse_cap, parse_duration
from engine.core.errors import FlowError, FlowErrors
from engine.core.sendopts import PRIORITIES, RECEIPT_LEVELS
from engine.flows import yamlsrc
from engine.flows.fields import BUILT_IN
from engine.flows.limits import Limits
from engine.flows.model import Flow, FlowSms, Node
from engine.flows.nodes import NAME_RE, check_segments, parse_node
from engine.flows.problems import Collector
from engine.flows.templates import make_environment
from engine.flows.text import fold

FLOW_KEYS = {
    "name", "version", "description", "language", "triggers", "expire_after", "start", "nodes",
    "conversational", "fields", "caps", "fallback", "purpose", "sms",
}  # fmt: skip
#: The keys of a flow's ``sms:`` section.
SMS_KEYS = ("validity", "priority", "receipts")
#: A flow's ``purpose:`` (engine/governance/consent.py's PURPOSES).
PURPOSES = ("service", "marketing")


def _too_big(file: str, size: int, limits: Limits) -> FlowErrors:
    return FlowErrors(
        [FlowError(file, 1, None, f"the file is {size:,} bytes, over the limit of {limits.max_bytes:,} "
                                  "(engine.max_flow_bytes)")]
    )  # fmt: skip


def load_flow(path: str | Path, env: jinja2.Environment | None = None, limits: Limits | None = None) -> Flow:
    """Load and compile one flow file; raise :class:`FlowErrors` listing every problem."""
    path = Path(path)
    file = str(path)
    limits = limits or Limits()
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:  # refused before reading a byte of it
            raise _too_big(file, size, limits)
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FlowErrors([FlowError(file, None, None, f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise FlowErrors([FlowError(file, None, None, f"not UTF-8 text: {exc.reason}")]) from None
    return parse_flow(text, file, env, limits)


def parse_flow(
    text: str, file: str, env: jinja2.Environment | None = None, limits: Limits | None = None
) -> Flow:
    """Compile flow YAML ``text`` (``file`` is only used in error messages)."""
    limits = limits or Limits()
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        raise _too_big(file, size, limits)
    errs = Collector(file, limits)
    try:
        data = yamlsrc.load(text, limits.max_depth)
    except yamlsrc.DuplicateKey as exc:
        raise FlowErrors([FlowError(file, exc.line, None, str(exc))]) from None
    except (yamlsrc.TooDeep, yamlsrc.TooLarge) as exc:
        raise FlowErrors([FlowError(file, exc.line, None, str(exc))]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise FlowErrors([FlowError(file, line, None, f"invalid YAML: {problem}")]) from None
    if not isinstance(data, yamlsrc.LineDict):
        raise FlowErrors([FlowError(file, 1, None, "a flow file must be a mapping")])

    env = env or make_environment()
    flow = _flow(data, file, errs, env)
    if flow is not None:
        flow.text = text
        flow.digest = hashlib.blake2b(text.encode(), digest_size=6).hexdigest()
    if flow is not None:
        raw_nodes = data.get("nodes")
        declared = set(raw_nodes) if isinstance(raw_nodes, dict) else set()
        _check_graph(flow, declared, errs)
    if errs.errors:
        raise FlowErrors(errs.errors)
    assert flow is not None
    return flow


def _flow(d: yamlsrc.LineDict, file: str, errs: Collector, env: jinja2.Environment) -> Flow | None:
    for key in d:
        if key not in FLOW_KEYS:
            errs.add(d.line_of(key), None, f"unknown key {key!r} (known: {', '.join(sorted(FLOW_KEYS))})")
    for key in ("name", "start", "nodes"):
        if key not in d:
            errs.add(d.line, None, f"missing required key {key!r}")
    name = d.get("name")
    if "name" in d and not (isinstance(name, str) and NAME_RE.match(name)):
        errs.add(d.line_of("name"), None, f"name must be lower_snake_case, got {name!r}")
    version = d.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        errs.add(d.line_of("version"), None, f"version must be a whole number >= 1, got {version!r}")
        version = 1
    expire = 7 * 86400.0
    if "expire_after" in d:
        try:
            expire = parse_duration(d["expire_after"])
        except ValueError as exc:
            errs.add(d.line_of("expire_after"), None, f"expire_after: {exc}")
    triggers = d.get("triggers", [])
    if not (isinstance(triggers, list) and all(isinstance(t, str) and t.strip() for t in triggers)):
        errs.add(d.line_of("triggers"), None, "triggers must be a list of keywords")
        triggers = []
    for t in triggers:
        words = t.split()
        if "*" in t and (words[-1] != "*" or len(words) < 2 or "*" in " ".join(words[:-1])):
            errs.add(
                d.line_of("triggers"),
                None,
                f"trigger {t!r}: * only as its own last word, like 'order *'",
            )
    language = d.get("language", "en")
    if not isinstance(language, str):
        errs.add(d.line_of("language"), None, "language must be a language code like en")
        language = "en"
    required = d.get("fields", [])
    if not (isinstance(required, list) and all(isinstance(f, str) and f for f in required)):
        errs.add(d.line_of("fields"), None, "fields must be a list of the contact fields this flow requires")
        required = []
    conversational = d.get("conversational", True)
    if not isinstance(conversational, bool):
        errs.add(d.line_of("conversational"), None, "conversational must be true or false")
        conversational = True
    caps: list[str] | None = None
    if "caps" in d:
        raw_caps = d.get("caps")
        if not isinstance(raw_caps, list) or not all(isinstance(c, str) for c in raw_caps):
            errs.add(d.line_of("caps"), None, "caps must be a list like ['1 per 7d'] ([] for none)")
        else:
            caps = []
            for c in raw_caps:
                try:
                    parse_cap(c)
                    caps.append(c)
                except ValueError as exc:
                    errs.add(d.line_of("caps"), None, f"caps: {exc}")
    purpose = d.get("purpose", "service")
    if purpose not in PURPOSES:
        errs.add(d.line_of("purpose"), None, f"purpose must be service or marketing, got {purpose!r}")
        purpose = "service"
    elif purpose == "marketing" and caps == []:
        errs.add(d.line_of("caps"), None, "caps: [] is for service flows (marketing is held to caps)")

    raw_nodes = d.get("nodes")
    nodes: dict[str, Node] = {}
    if "nodes" in d:
        if not isinstance(raw_nodes, yamlsrc.LineDict) or not raw_nodes:
            errs.add(d.line_of("nodes"), None, "nodes must be a mapping of node name -> node")
        elif len(raw_nodes) > errs.limits.max_nodes:
            errs.add(
                d.line_of("nodes"),
                None,
                f"{len(raw_nodes):,} nodes, more than the limit of {errs.limits.max_nodes:,} "
                "(engine.max_flow_nodes)",
            )
            return None
        else:
            for node_name, body in raw_nodes.items():
                node = parse_node(node_name, body, raw_nodes.line_of(node_name), errs, env)
                if node is not None:
                    nodes[node_name] = node
    declared = BUILT_IN | set(required)
    for node_name, field_name, at in errs.uses:
        set_here = node_name in nodes and field_name in nodes[node_name].sets  # set before it speaks
        if field_name not in declared and not set_here:
            errs.add(
                at,
                node_name,
                f"uses contact.{field_name}, which the flow does not require: add it to fields: "
                f"(contacts without it are not started) or write contact.{field_name} | default(...)",
            )
    fallback: dict[str, str] = {}
    if "fallback" in d:
        fallback = _fallback(d, errs, env)
    start = d.get("start")
    if "start" in d and isinstance(raw_nodes, dict) and start not in raw_nodes:
        errs.add(d.line_of("start"), None, f"start names {start!r}, which is not a node")
    if not isinstance(name, str) or not isinstance(start, str):
        return None
    return Flow(
        name=name,
        version=version,
        source=file,
        start=start,
        nodes=nodes,
        description=str(d.get("description", "")),
        language=language,
        triggers=[fold(t) for t in triggers],
        expire_after=expire,
        conversational=conversational,
        fields=list(required),
        caps=caps,
        purpose=purpose,
        sms=_sms(d, errs) if "sms" in d else None,
        fallback=fallback,
        max_segments=errs.limits.max_segments,
    )


def _sms(d: yamlsrc.LineDict, errs: Collector) -> FlowSms | None:
    """``sms:``: delivery options for the flow's messages (validity, priority, receipts)."""
    line, raw = d.line_of("sms"), d["sms"]
    if not isinstance(raw, dict):
        errs.add(line, None, f"sms must be a mapping with {', '.join(SMS_KEYS)}")
        return None
    for key in raw:
        if key not in SMS_KEYS:
            errs.add(line, None, f"sms: unknown key {key!r} (known: {', '.join(SMS_KEYS)})")
    validity, priority, receipts = None, raw.get("priority"), raw.get("receipts", "")
    if "validity" in raw:
        try:
            validity = parse_duration(raw["validity"])
        except ValueError as exc:
            errs.add(line, None, f"sms.validity: {exc}")
        else:
            if validity <= 0:
                errs.add(line, None, "sms.validity: must be more than 0 (leave it out for the connector's)")
                validity = None
    if priority is not None and (isinstance(priority, bool) or priority not in PRIORITIES):
        errs.add(line, None, f"sms.priority: must be a whole number from 0 to 3, got {priority!r}")
        priority = None
    if receipts and receipts not in RECEIPT_LEVELS:
        errs.add(line, None, f"sms.receipts: must be one of {', '.join(RECEIPT_LEVELS)}, got {receipts!r}")
        receipts = ""
    return FlowSms(validity=validity, priority=priority, receipts=str(receipts))


def _fallback(d: yamlsrc.LineDict, errs: Collector, env: jinja2.Environment) -> dict[str, str]:
    """``fallback:``: plain text (or language -> text) sent when a template fails at run time.
    It cannot be a template itself: it is what is said when templates cannot be trusted."""
    line = d.line_of("fallback")
    value = d["fallback"]
    variants = {"": value} if isinstance(value, str) else value
    if not (
        isinstance(variants, dict)
        and variants
        and all(isinstance(v, str) and v.strip() for v in variants.values())
    ):
        errs.add(line, None, "fallback must be text, or a mapping of language -> text")
        return {}
    out: dict[str, str] = {}
    for lang, text in variants.items():
        if any(mark in text for mark in ("{{", "{%", "{#")):
            errs.add(line, None, "fallback must be plain text: it is sent when a template has failed")
            continue
        out[str(lang)] = " ".join(text.split())
        check_segments(out[str(lang)], line, None, errs)
    return out


def _check_graph(flow: Flow, declared: set[str], errs: Collector) -> None:
    """References, reachability and goto loops. Runs even when nodes had errors of their own,
    so one typo does not hide the rest; the walks only run over a graph whose edges all exist."""
    dangling = False
    for node in flow.nodes.values():
        for target in node.successors():
            if target not in declared:
                errs.add(node.line, node.name, f"goes to {target!r}, which is not a node")
                dangling = True
    if dangling or flow.start not in flow.nodes or set(flow.nodes) != declared:
        return
    reachable: set[str] = set()
    todo = [flow.start]
    while todo:
        n = todo.pop()
        if n in reachable:
            continue
        reachable.add(n)
        todo.extend(flow.nodes[n].successors())
    for node in flow.nodes.values():
        if node.name not in reachable:
            errs.add(node.line, node.name, "unreachable: no path from start leads here")
    # A loop through nodes that never wait would spin without ever hearing from the customer.
    # Depth-first with an explicit stack (a recursive walk overflows on a long chain of gotos).
    moving = {n for n, node in flow.nodes.items() if not node.wait}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in sorted(moving, key=lambda k: flow.nodes[k].line):
        if state.get(root) is not None:
            continue
        path = [root]
        stack = [iter(flow.nodes[root].successors())]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                state[path.pop()] = 2
                continue
            if nxt not in moving:
                continue
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                first = flow.nodes[cycle[0]]
                errs.add(first.line, first.name, f"loops without waiting for a reply: {' -> '.join(cycle)}")
                return
            if state.get(nxt) is None:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(flow.nodes[nxt].successors()))
