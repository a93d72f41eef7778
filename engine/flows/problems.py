"""Collecting every problem of a flow file, each with its line and node, and compiling its
templates under the nesting bound (engine/flows/limits.py). Shared by the file-level parser
(engine/flows/loader.py) and the node grammar (engine/flows/nodes.py)."""

from __future__ import annotations

import jinja2

from engine.core.errors import FlowError, RenderError
from engine.flows.fields import unguarded
from engine.flows.limits import MAX_TEMPLATE_NESTING, Limits
from engine.flows.templates import Template

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


class Collector:
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
