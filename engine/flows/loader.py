"""Reading, validating and compiling flow files.

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
import re
from pathlib import Path
from typing import Any

import jinja2
import yaml

from engine.core.config import parse_cap, parse_duration
from engine.core.errors import FlowError, FlowErrors, RenderError
from engine.core.sms import encoding_of
from engine.flows import yamlsrc
from engine.flows.conditions import compile_condition, is_condition
from engine.flows.fields import BUILT_IN, unguarded
from engine.flows.limits import MAX_TEMPLATE_NESTING, Limits
from engine.flows.model import Call, Case, Flow, Node, Reprompt
from engine.flows.reply_tests import TestArgError, compile_test
from engine.flows.templates import Template, make_environment
from engine.flows.text import fold

FLOW_KEYS = {
    "name", "version", "description", "language", "triggers", "expire_after", "start", "nodes",
    "conversational", "fields", "caps", "fallback",
}  # fmt: skip
NODE_KEYS = {
    "say", "wait", "cases", "default", "reprompt", "goto", "end", "set", "tag", "start", "call", "consent",
    "success", "failure",
}  # fmt: skip
CALL_KEYS = {"url", "method", "headers", "body", "timeout", "save", "fields", "cache"}
#: The longest a CRM answer may be reused (``call: cache:``).
MAX_CALL_CACHE_S = 86400.0
TAG_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
WAIT_KEYS = {"save", "timeout"}
CASE_KEYS = {"when", "goto", "category"}
REPROMPT_KEYS = {"say", "max", "after"}
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


#: Jinja tags that open a block closed by an ``end...`` tag (``set`` is left out: mostly inline).
_BLOCK_TAGS = frozenset({"if", "for", "macro", "call", "filter", "with", "block", "autoescape", "trans"})


def _template_nesting(env: jinja2.Environment, source: str) -> tuple[int, int]:
    """The deepest nesting of blocks and brackets in a template, and the line where it is
    reached, from Jinja's lexer (which does not recurse: its parser and Python's compiler do,
    and fail on a few thousand levels)."""
    depth = deepest = 0
    at = 1
    after_block_start = False
    for lineno, kind, value in env.lex(source):
        if kind == "whitespace":
            continue
        if kind == "block_begin":
            after_block_start = True
            continue
        if after_block_start and kind == "name":
            if value in _BLOCK_TAGS:
                depth += 1
            elif value.startswith("end") and value[3:] in _BLOCK_TAGS:
                depth -= 1
        elif kind == "operator" and value in "([{":
            depth += 1
        elif kind == "operator" and value in ")]}":
            depth -= 1
        after_block_start = False
        if depth > deepest:
            deepest, at = depth, lineno
    return deepest, at


class _Collector:
    def __init__(self, file: str, limits: Limits) -> None:
        self.file = file
        self.limits = limits
        self.errors: list[FlowError] = []
        #: (node, contact field, line) for every unguarded ``contact.X`` in a template.
        self.uses: list[tuple[str, str, int]] = []

    def template(self, env: jinja2.Environment, source: str, line: int, node: str) -> Template | None:
        """Compile one template, noting its unguarded contact fields; None on a syntax error."""
        try:
            deepest, at = _template_nesting(env, source)
        except jinja2.TemplateSyntaxError as exc:
            self.add(line + max(exc.lineno - 1, 0), node, f"template syntax: {exc.message}")
            return None
        if deepest > MAX_TEMPLATE_NESTING:
            self.add(
                line + at - 1,
                node,
                f"template blocks or brackets nested too deeply (more than {MAX_TEMPLATE_NESTING})",
            )
            return None
        try:
            tpl = Template(env, source)
        except jinja2.TemplateSyntaxError as exc:
            self.add(line + max(exc.lineno - 1, 0), node, f"template syntax: {exc.message}")
            return None
        except RenderError as exc:  # uses no data, and fails: it would fail for every contact
            self.add(line, node, f"this template fails for every contact: {exc.reason}")
            return None
        except (RecursionError, SyntaxError, MemoryError) as exc:  # what the nesting check missed
            self.add(line, node, f"template cannot be compiled: {type(exc).__name__}")
            return None
        for field_name, at in unguarded(env.parse(source)):
            self.uses.append((node, field_name, line + at - 1))
        return tpl

    def add(self, line: int | None, node: str | None, problem: str) -> None:
        self.errors.append(FlowError(self.file, line, node, problem))


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
    errs = _Collector(file, limits)
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


def _flow(d: yamlsrc.LineDict, file: str, errs: _Collector, env: jinja2.Environment) -> Flow | None:
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
                node = _node(node_name, body, raw_nodes.line_of(node_name), errs, env)
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
        fallback=fallback,
        max_segments=errs.limits.max_segments,
    )


def _fallback(d: yamlsrc.LineDict, errs: _Collector, env: jinja2.Environment) -> dict[str, str]:
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
        _check_segments(out[str(lang)], line, None, errs)
    return out


def _check_segments(text: str, line: int, node: str | None, errs: _Collector) -> None:
    segments = encoding_of(text).segments
    if segments > errs.limits.max_segments:
        errs.add(
            line,
            node,
            f"the message is {segments} SMS segments long, more than the limit of {errs.limits.max_segments} "
            "(engine.max_segments)",
        )


def _say(
    value: Any, line: int, node: str, errs: _Collector, env: jinja2.Environment
) -> dict[str, Template] | None:
    variants: dict[str, Any]
    lines: dict[str, int] = {}
    if isinstance(value, str):
        variants = {"": value}
    elif isinstance(value, dict) and value and all(isinstance(v, str) for v in value.values()):
        variants = {str(k): v for k, v in value.items()}
        if isinstance(value, yamlsrc.LineDict):
            lines = {k: value.value_line(k) for k in variants}
    else:
        errs.add(line, node, "say must be text, or a mapping of language -> text")
        return None
    out: dict[str, Template] = {}
    for lang, src in variants.items():
        tpl = errs.template(env, src, lines.get(lang, line), node)
        if tpl is not None:
            out[lang] = tpl
            if tpl.constant is not None:
                _check_segments(tpl.constant, lines.get(lang, line), node, errs)
    return out


def _node(name: str, body: Any, line: int, errs: _Collector, env: jinja2.Environment) -> Node | None:
    if not NAME_RE.match(str(name)):
        errs.add(line, str(name), "node names must be lower_snake_case")
    if not isinstance(body, yamlsrc.LineDict):
        errs.add(line, name, "a node must be a mapping (say / wait / cases / goto / end)")
        return None
    for key in body:
        if key not in NODE_KEYS:
            errs.add(
                body.line_of(key),
                name,
                f"unknown key {key!r} (known: {', '.join(sorted(NODE_KEYS))})",
            )
    node = Node(name=name, line=line)
    if "say" in body:
        node.say = _say(body["say"], body.value_line("say"), name, errs, env)
    is_split = "cases" in body and "wait" not in body
    exits = [k for k in ("wait", "goto", "end", "start", "call") if k in body] + (
        ["cases"] if is_split else []
    )
    if len(exits) != 1:
        errs.add(
            line,
            name,
            "a node needs exactly one of wait (for a reply), cases + default (route on data), "
            "goto (next node), end (an outcome), start (another flow) or call (a CRM webhook)",
        )
    if "call" in body:
        node.call = _call(body, node, errs, env)
    elif "success" in body or "failure" in body:
        errs.add(line, name, "success and failure are the routes of a call node; this node has no call")
    if "set" in body:
        _sets(body, node, errs, env)
    if "tag" in body:
        tags = body["tag"] if isinstance(body["tag"], list) else [body["tag"]]
        if not all(isinstance(t, str) and TAG_RE.match(t) for t in tags):
            errs.add(
                body.line_of("tag"),
                name,
                f"tag must be a tag or a list of tags (letters, digits, _ and -), got {body['tag']!r}",
            )
        else:
            node.tags = tags
    if "consent" in body:
        if body["consent"] not in ("opted_in", "opted_out"):
            errs.add(
                body.line_of("consent"),
                name,
                f"consent must be opted_in or opted_out, got {body['consent']!r}",
            )
        else:
            node.consent = body["consent"]
    node.start_flow = _snake(body, "start", body.line_of("start"), name, errs, "a flow")
    if "goto" in body:
        node.goto = _ref(body, "goto", name, errs)
    node.end = _snake(body, "end", body.line_of("end"), name, errs, "an outcome")
    if "wait" in body:
        node.wait = True
        wait = body["wait"]
        if wait is None:
            wait = yamlsrc.LineDict()
        if not isinstance(wait, dict):
            errs.add(body.line_of("wait"), name, "wait must be a mapping (e.g. wait: {save: nps_score})")
        else:
            for key in wait:
                if key not in WAIT_KEYS:
                    errs.add(body.line_of("wait"), name, f"unknown wait key {key!r} (known: save, timeout)")
            if "timeout" in wait:
                _timeout(wait["timeout"], body.line_of("wait"), node, errs)
            node.save = _snake(wait, "save", body.line_of("wait"), name, errs, "a result")
        _cases(body, node, errs)
        if "default" in body:
            node.default = _ref(body, "default", name, errs)
        if "reprompt" in body:
            node.reprompt = _reprompt(body, node, errs, env)
        # What was written, not what compiled: a broken case is reported once, on its own line.
        if not body.get("cases") and "default" not in body:
            errs.add(line, name, "a node that waits needs cases or a default")
    elif is_split:
        _cases(body, node, errs)
        if "default" in body:
            node.default = _ref(body, "default", name, errs)
        else:
            errs.add(line, name, "a node that routes on data needs a default for when no case matches")
        if "reprompt" in body:
            errs.add(
                body.line_of("reprompt"), name, "reprompt only makes sense on a node that waits for a reply"
            )
    else:
        for key in ("default", "reprompt"):
            if key in body:
                errs.add(body.line_of(key), name, f"{key} only makes sense on a node that waits or routes")
    return node


def _sets(body: yamlsrc.LineDict, node: Node, errs: _Collector, env: jinja2.Environment) -> None:
    """``set: {field: value}``: contact fields to write; text values are templates."""
    from engine.core.contacts import FIELD_NAME_RE, RESERVED_FIELDS

    spec, line = body["set"], body.line_of("set")
    if not isinstance(spec, dict) or not spec:
        errs.add(line, node.name, "set must be a mapping of contact field -> value")
        return
    for key, value in spec.items():
        if not FIELD_NAME_RE.match(str(key)) or key in RESERVED_FIELDS:
            errs.add(line, node.name, f"set: {key!r} is not a contact field name you can set")
            continue
        if isinstance(value, dict | list):
            errs.add(line, node.name, f"set: {key}: values are text, numbers, true/false or null")
            continue
        if not isinstance(value, str):
            node.sets[str(key)] = _Literal(value)
            continue
        at = spec.value_line(str(key)) if isinstance(spec, yamlsrc.LineDict) else line
        tpl = errs.template(env, value, at, node.name)
        if tpl is not None:
            node.sets[str(key)] = tpl


class _Literal(Template):
    """A non-text value in ``set`` (a number, true/false, null), stored as it is."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value
        self.source = repr(value)

    def render_value(self, context: dict[str, Any]) -> Any:
        return self.value


def _call(body: yamlsrc.LineDict, node: Node, errs: _Collector, env: jinja2.Environment) -> Call | None:
    """``call: {url, method, headers, body, timeout, save}`` with ``success:`` and ``failure:``
    routes on the node, beside it."""
    spec, line = body["call"], body.line_of("call")
    if not isinstance(spec, yamlsrc.LineDict) or "url" not in spec:
        errs.add(line, node.name, "call must be a mapping with at least a url")
        return None
    for key in spec:
        if key not in CALL_KEYS:
            errs.add(
                spec.line_of(key),
                node.name,
                f"call: unknown key {key!r} (known: {', '.join(sorted(CALL_KEYS))})",
            )
    for key in ("success", "failure"):
        if not isinstance(body.get(key), str):
            what = "answers" if key == "success" else "fails or does not answer in time"
            errs.add(line, node.name, f"a call node needs {key}: NODE (where to go when the CRM {what})")
            return None
    method = str(spec.get("method", "GET")).upper()
    if method not in ("GET", "POST", "PUT", "PATCH"):
        errs.add(
            spec.line_of("method"), node.name, f"call method must be GET, POST, PUT or PATCH, got {method!r}"
        )
    timeout_s = _call_duration(spec, "timeout", 5.0, (0.1, 30.0), "between 100ms and 30s", node, errs)
    save = _snake(spec, "save", spec.line_of("save"), node.name, errs, "a result")
    cache_s = _call_duration(spec, "cache", 0.0, (0.0, MAX_CALL_CACHE_S), "between 0 and 1d", node, errs)
    if cache_s and method != "GET":
        errs.add(spec.line_of("cache"), node.name, f"only a GET's answer can be cached, not a {method}'s")
    from engine.core.contacts import FIELD_NAME_RE, RESERVED_FIELDS

    fields: dict[str, str] = {}
    raw_fields = spec.get("fields")
    if raw_fields is not None:
        if not isinstance(raw_fields, dict) or not all(isinstance(v, str) and v for v in raw_fields.values()):
            errs.add(spec.line_of("fields"), node.name, "call fields must map contact field -> answer path")
        else:
            for name, path in raw_fields.items():
                if not FIELD_NAME_RE.match(str(name)) or name in RESERVED_FIELDS:
                    errs.add(
                        spec.line_of("fields"),
                        node.name,
                        f"call fields: {name!r} is not a contact field name",
                    )
                fields[str(name)] = path

    def templates(key: str) -> dict[str, Template] | None:
        raw = spec.get(key)
        if raw is None:
            return None
        if not isinstance(raw, dict) or not all(
            isinstance(v, str | int | float | bool) for v in raw.values()
        ):
            errs.add(spec.line_of(key), node.name, f"call {key} must be a flat mapping of name -> value")
            return None
        out: dict[str, Template] = {}
        for k, v in raw.items():
            tpl = errs.template(env, v, spec.line_of(key), node.name) if isinstance(v, str) else _Literal(v)
            if tpl is not None:
                out[str(k)] = tpl
        return out

    url = errs.template(env, str(spec["url"]), spec.value_line("url"), node.name)
    if url is None:
        return None
    return Call(
        url=url, method=method, headers=templates("headers") or {}, body=templates("body"),
        timeout=timeout_s, save=save, success=str(body["success"]), failure=str(body["failure"]),
        fields=fields, cache=cache_s,
    )  # fmt: skip


def _call_duration(
    spec: yamlsrc.LineDict, key: str, default: float, bounds: tuple[float, float], said: str, node: Node,
    errs: _Collector,
) -> float:  # fmt: skip
    """A call's ``timeout`` or ``cache``: a duration within ``bounds`` (an error naming the line)."""
    if key not in spec:
        return default
    try:
        value = parse_duration(spec[key])
    except ValueError as exc:
        errs.add(spec.line_of(key), node.name, f"call {key}: {exc}")
        return default
    if not bounds[0] <= value <= bounds[1]:
        errs.add(spec.line_of(key), node.name, f"call {key} must be {said}")
    return value


def _timeout(spec: Any, line: int, node: Node, errs: _Collector) -> None:
    """``timeout: {after: 4h, goto: remind}``: no reply within ``after`` -> go to ``goto``."""
    if not (isinstance(spec, dict) and set(spec) == {"after", "goto"} and isinstance(spec["goto"], str)):
        errs.add(line, node.name, f"timeout must be {{after: DURATION, goto: NODE}}, got {spec!r}")
        return
    try:
        after = parse_duration(spec["after"])
    except ValueError as exc:
        errs.add(line, node.name, f"timeout after: {exc}")
        return
    if after < 60:
        errs.add(line, node.name, f"timeout after must be at least 1m, got {spec['after']!r}")
        return
    node.timeout, node.timeout_goto = after, spec["goto"]


def _snake(mapping: Any, key: str, line: int, node: str, errs: _Collector, what: str) -> str | None:
    """``mapping[key]`` when it is a lower_snake_case name; None (and an error saying it should
    name ``what``) when it is something else; None when absent."""
    value = mapping.get(key)
    if value is None:
        return None
    if isinstance(value, str) and NAME_RE.match(value):
        return value
    errs.add(line, node, f"{key} must name {what} in lower_snake_case, got {value!r}")
    return None


def _ref(body: yamlsrc.LineDict, key: str, node: str, errs: _Collector) -> str | None:
    value = body[key]
    if not isinstance(value, str):
        errs.add(body.line_of(key), node, f"{key} must name a node, got {value!r}")
        return None
    return value


def _cases(body: yamlsrc.LineDict, node: Node, errs: _Collector) -> None:
    raw = body.get("cases", [])
    if not isinstance(raw, list):
        errs.add(body.line_of("cases"), node.name, "cases must be a list of {when, goto}")
        return
    for i, c in enumerate(raw):
        cline = c.line if isinstance(c, yamlsrc.LineDict) else body.line_of("cases")
        if not isinstance(c, dict):
            errs.add(cline, node.name, f"case {i + 1} must be a mapping with when and goto")
            continue
        for key in c:
            if key not in CASE_KEYS:
                errs.add(
                    cline,
                    node.name,
                    f"case {i + 1}: unknown key {key!r} (known: category, goto, when)",
                )
        if "when" not in c or "goto" not in c:
            errs.add(cline, node.name, f"case {i + 1} needs both when and goto")
            continue
        goto = c["goto"]
        if not isinstance(goto, str):
            errs.add(cline, node.name, f"case {i + 1}: goto must name a node")
            continue
        category = str(c.get("category", goto))
        label = _label(c["when"])
        try:
            if is_condition(c["when"]):
                cond = compile_condition(c["when"])
                node.cases.append(Case(goto=goto, category=category, line=cline, condition=cond, label=label))
            elif not node.wait:
                errs.add(
                    cline,
                    node.name,
                    f"case {i + 1}: reply tests need a node that waits; route on data with {{field: …}}",
                )
            else:
                test = compile_test(c["when"])
                node.cases.append(Case(goto=goto, category=category, line=cline, test=test, label=label))
        except TestArgError as exc:
            errs.add(cline, node.name, f"case {i + 1}: {exc}")


def _label(spec: Any) -> str:
    if isinstance(spec, dict) and "field" in spec:
        ops = [f"{k} {v}" for k, v in spec.items() if k != "field"]
        return f"{spec['field']} {' '.join(ops)}"
    if isinstance(spec, dict) and len(spec) == 1:
        ((name, arg),) = spec.items()
        return f"{name} {arg}"
    return str(spec)


def _reprompt(
    body: yamlsrc.LineDict, node: Node, errs: _Collector, env: jinja2.Environment
) -> Reprompt | None:
    r = body["reprompt"]
    line = body.line_of("reprompt")
    if not isinstance(r, dict) or "say" not in r:
        errs.add(line, node.name, "reprompt must be a mapping with say (and optionally max, after)")
        return None
    for key in r:
        if key not in REPROMPT_KEYS:
            errs.add(line, node.name, f"reprompt: unknown key {key!r} (known: after, max, say)")
    say = _say(r["say"], line, node.name, errs, env)
    max_ = r.get("max", 2)
    if isinstance(max_, bool) or not isinstance(max_, int) or max_ < 1:
        errs.add(line, node.name, f"reprompt max must be a whole number >= 1, got {max_!r}")
        max_ = 2
    after = r.get("after")
    if after is not None and not isinstance(after, str):
        errs.add(line, node.name, "reprompt after must name a node")
        after = None
    return Reprompt(say=say or {}, max=max_, after=after)


def _check_graph(flow: Flow, declared: set[str], errs: _Collector) -> None:
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


class FlowRegistry:
    """The loaded flows by name, plus every version seen by this process by (name, digest).

    New conversations take the current file; a conversation finishes on the version it started
    with (its state records the digest). Loading refuses the whole set if any file is invalid.
    """

    def __init__(self, flows: dict[str, Flow], limits: Limits | None = None) -> None:
        self.flows = flows
        #: The bounds these flows were loaded with (a stored version is re-read with them too).
        self.limits = limits or Limits()
        self._triggers = {t: f for f in flows.values() for t in f.triggers}
        self.versions: dict[tuple[str, str], Flow] = {(f.name, f.digest): f for f in flows.values()}

    def for_state(self, state: dict[str, Any]) -> Flow | None:
        """The flow version a session runs on: pinned by digest, else the current one."""
        name, digest = state.get("f", ""), state.get("fh")
        if digest:
            return self.versions.get((name, digest))
        return self.flows.get(name)

    def knows(self, state: dict[str, Any]) -> bool:
        return not state.get("fh") or (state.get("f", ""), state["fh"]) in self.versions

    def remember(self, flow: Flow) -> None:
        self.versions[(flow.name, flow.digest)] = flow

    def succeed(self, old: FlowRegistry) -> None:
        """Keep the versions an older registry knew (sessions may still be on them)."""
        for key, flow in old.versions.items():
            self.versions.setdefault(key, flow)

    @classmethod
    def from_dir(cls, path: str | Path, limits: Limits | None = None) -> FlowRegistry:
        """Load every flow file in a directory; :class:`FlowErrors` lists every problem. Slow
        for big files (pure-Python YAML): call it off the event loop (``asyncio.to_thread``)."""
        limits = limits or Limits()
        root = Path(path)
        if not root.is_dir():
            raise FlowErrors([FlowError(str(root), None, None, "flows directory not found")])
        env = make_environment()
        flows: dict[str, Flow] = {}
        errors: list[FlowError] = []
        for file in sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml")):
            try:
                flow = load_flow(file, env, limits)
            except FlowErrors as exc:
                errors.extend(exc.errors)
                continue
            if flow.name in flows:
                errors.append(
                    FlowError(
                        str(file),
                        None,
                        None,
                        f"flow name {flow.name!r} is also used by {flows[flow.name].source}",
                    )
                )
            flows[flow.name] = flow
        for flow in flows.values():
            for node in flow.nodes.values():
                if node.start_flow and node.start_flow not in flows:
                    errors.append(
                        FlowError(
                            flow.source,
                            node.line,
                            node.name,
                            f"starts flow {node.start_flow!r}, which is not loaded",
                        )
                    )
        seen: dict[str, str] = {}
        for flow in flows.values():
            for t in flow.triggers:
                if t in seen:
                    errors.append(
                        FlowError(
                            flow.source,
                            None,
                            None,
                            f"trigger {t!r} is also a trigger of flow {seen[t]!r}",
                        )
                    )
                seen[t] = flow.name
        if errors:
            raise FlowErrors(errors)
        return cls(flows, limits)

    def get(self, name: str) -> Flow | None:
        return self.flows.get(name)

    def by_trigger(self, text: str) -> Flow | None:
        """The flow whose trigger keyword is the whole message (case and accents ignored)."""
        return self._triggers.get(fold(text).strip(" .!?"))
