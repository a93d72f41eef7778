"""The grammar of one flow node: ``say``, ``wait``, ``cases``, ``reprompt``, ``set``, ``call``,
``goto``/``end``/``handoff`` and their checks, each problem noted with its line (engine/flows/problems.py).
The file around the nodes (name, triggers, fallback, the graph) is engine/flows/loader.py's."""

from __future__ import annotations

import re
from typing import Any

import jinja2

from engine.core.config import parse_duration
from engine.core.sms import encoding_of
from engine.flows import yamlsrc
from engine.flows.conditions import compile_condition, is_condition
from engine.flows.model import Call, Case, Node, Reprompt
from engine.flows.problems import Collector
from engine.flows.reply_tests import TestArgError, compile_test
from engine.flows.templates import Template

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
NODE_KEYS = {
    "say", "wait", "cases", "default", "reprompt", "goto", "end", "set", "tag", "start", "call", "consent",
    "success", "failure", "handoff",
}  # fmt: skip
CALL_KEYS = {"url", "method", "headers", "body", "timeout", "save", "fields", "cache"}
#: The longest a CRM answer may be reused (``call: cache:``).
MAX_CALL_CACHE_S = 86400.0
TAG_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
WAIT_KEYS = {"save", "timeout"}
CASE_KEYS = {"when", "goto", "category"}
REPROMPT_KEYS = {"say", "max", "after"}


def check_segments(text: str, line: int, node: str | None, errs: Collector) -> None:
    segments = encoding_of(text).segments
    if segments > errs.limits.max_segments:
        errs.add(
            line,
            node,
            f"the message is {segments} SMS segments long, more than the limit of {errs.limits.max_segments} "
            "(engine.max_segments)",
        )


def parse_say(
    value: Any, line: int, node: str, errs: Collector, env: jinja2.Environment
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
                check_segments(tpl.constant, lines.get(lang, line), node, errs)
    return out


def parse_node(name: str, body: Any, line: int, errs: Collector, env: jinja2.Environment) -> Node | None:
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
        node.say = parse_say(body["say"], body.value_line("say"), name, errs, env)
    is_split = "cases" in body and "wait" not in body
    exits = [k for k in ("wait", "goto", "end", "start", "call", "handoff") if k in body] + (
        ["cases"] if is_split else []
    )
    if len(exits) != 1:
        errs.add(
            line,
            name,
            "a node needs exactly one of wait (for a reply), cases + default (route on data), "
            "goto (next node), end (an outcome), start (another flow), call (a CRM webhook) or "
            "handoff (to a person)",
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
        if body["consent"] not in ("opted_in", "opted_out", "marketing_opted_in", "marketing_opted_out"):
            errs.add(
                body.line_of("consent"),
                name,
                "consent must be opted_in, opted_out, marketing_opted_in or marketing_opted_out, "
                f"got {body['consent']!r}",
            )
        else:
            node.consent = body["consent"]
    node.start_flow = _snake(body, "start", body.line_of("start"), name, errs, "a flow")
    if "goto" in body:
        node.goto = _ref(body, "goto", name, errs)
    node.end = _snake(body, "end", body.line_of("end"), name, errs, "an outcome")
    node.handoff = _snake(body, "handoff", body.line_of("handoff"), name, errs, "a reason for the inbox")
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


def _sets(body: yamlsrc.LineDict, node: Node, errs: Collector, env: jinja2.Environment) -> None:
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


def _call(body: yamlsrc.LineDict, node: Node, errs: Collector, env: jinja2.Environment) -> Call | None:
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
    errs: Collector,
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


def _timeout(spec: Any, line: int, node: Node, errs: Collector) -> None:
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


def _snake(mapping: Any, key: str, line: int, node: str, errs: Collector, what: str) -> str | None:
    """``mapping[key]`` when it is a lower_snake_case name; None (and an error saying it should
    name ``what``) when it is something else; None when absent."""
    value = mapping.get(key)
    if value is None:
        return None
    if isinstance(value, str) and NAME_RE.match(value):
        return value
    errs.add(line, node, f"{key} must name {what} in lower_snake_case, got {value!r}")
    return None


def _ref(body: yamlsrc.LineDict, key: str, node: str, errs: Collector) -> str | None:
    value = body[key]
    if not isinstance(value, str):
        errs.add(body.line_of(key), node, f"{key} must name a node, got {value!r}")
        return None
    return value


def _cases(body: yamlsrc.LineDict, node: Node, errs: Collector) -> None:
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
    body: yamlsrc.LineDict, node: Node, errs: Collector, env: jinja2.Environment
) -> Reprompt | None:
    r = body["reprompt"]
    line = body.line_of("reprompt")
    if not isinstance(r, dict) or "say" not in r:
        errs.add(line, node.name, "reprompt must be a mapping with say (and optionally max, after)")
        return None
    for key in r:
        if key not in REPROMPT_KEYS:
            errs.add(line, node.name, f"reprompt: unknown key {key!r} (known: after, max, say)")
    say = parse_say(r["say"], line, node.name, errs, env)
    max_ = r.get("max", 2)
    if isinstance(max_, bool) or not isinstance(max_, int) or max_ < 1:
        errs.add(line, node.name, f"reprompt max must be a whole number >= 1, got {max_!r}")
        max_ = 2
    after = r.get("after")
    if after is not None and not isinstance(after, str):
        errs.add(line, node.name, "reprompt after must name a node")
        after = None
    return Reprompt(say=say or {}, max=max_, after=after)
