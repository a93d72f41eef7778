"""Static checks on templates: every ``contact.X`` a template uses must be either a field the
flow declares as required (``fields: [...]``: a contact without it is not started) or guarded
where it is used (``| default(...)``, ``is defined``), so a typo like ``contact.frist_name``
is refused at load instead of failing in front of a customer."""

from __future__ import annotations

from collections.abc import Iterator

from jinja2 import nodes

#: Names the engine always provides on ``contact``.
BUILT_IN = frozenset({"number", "language", "timezone", "tags", "fields"})
GUARD_FILTERS = frozenset({"default", "d"})
GUARD_TESTS = frozenset({"defined", "undefined", "none"})


def _contact_attr(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name) and node.node.name == "contact":
        return node.attr
    if (
        isinstance(node, nodes.Getitem)
        and isinstance(node.node, nodes.Name)
        and node.node.name == "contact"
        and isinstance(node.arg, nodes.Const)
        and isinstance(node.arg.value, str)
    ):
        return node.arg.value
    return None


def _defined_in(test: nodes.Node) -> set[str]:
    """Fields an ``if`` test proves present: ``contact.x is defined`` (also inside ``and``)."""
    out: set[str] = set()
    tests = [test] if isinstance(test, nodes.Test) else []
    for t in [*tests, *test.find_all(nodes.Test)]:
        if t.name == "defined" and (attr := _contact_attr(t.node)):
            out.add(attr)
    return out


def unguarded(tree: nodes.Node) -> Iterator[tuple[str, int]]:
    """Yield (field, line) for each ``contact.field`` used without a guard."""

    def walk(node: nodes.Node, guarded: bool, proven: frozenset[str]) -> Iterator[tuple[str, int]]:
        attr = _contact_attr(node)
        if attr is not None:
            if not guarded and attr not in proven:
                yield attr, node.lineno
            return
        if isinstance(node, nodes.Filter) and node.name in GUARD_FILTERS:
            guarded = True
        if isinstance(node, nodes.Test) and node.name in GUARD_TESTS:
            guarded = True
        if isinstance(node, nodes.If):
            yield from walk(node.test, guarded, proven)
            inner = proven | _defined_in(node.test)
            for child in node.body:
                yield from walk(child, guarded, frozenset(inner))
            for child in [*node.elif_, *node.else_]:
                yield from walk(child, guarded, proven)
            return
        if isinstance(node, nodes.CondExpr):  # x if contact.y is defined else z
            yield from walk(node.test, guarded, proven)
            yield from walk(node.expr1, guarded, frozenset(proven | _defined_in(node.test)))
            if node.expr2 is not None:
                yield from walk(node.expr2, guarded, proven)
            return
        if isinstance(node, nodes.Filter):
            # The default's own arguments are not guarded by it.
            if node.node is not None:
                yield from walk(node.node, guarded, proven)
            for child in [*node.args, *(kw.value for kw in node.kwargs)]:
                yield from walk(child, False if node.name in GUARD_FILTERS else guarded, proven)
            return
        for child in node.iter_child_nodes():
            yield from walk(child, guarded, proven)

    yield from walk(tree, False, frozenset())
