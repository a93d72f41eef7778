"""YAML reading that remembers line numbers, so every flow error can name ``file:line``."""

from __future__ import annotations

import re
from typing import Any

import yaml


class LineDict(dict[str, Any]):
    """A mapping from YAML that knows its own line and the line of each key."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.line = 0
        self.key_lines: dict[str, int] = {}
        self.value_lines: dict[str, int] = {}

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)

    def value_line(self, key: str) -> int:
        """Where the value's text starts: the line after the key for ``|`` and ``>`` blocks."""
        return self.value_lines.get(key, self.line_of(key))


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, line: int) -> None:
        super().__init__(f"key {key!r} appears twice (second time on line {line})")
        self.key = key
        self.line = line


class TooDeep(yaml.YAMLError):
    def __init__(self, limit: int, line: int) -> None:
        super().__init__(f"mappings and lists nested deeper than {limit} (engine.max_flow_depth)")
        self.line = line


class TooLarge(yaml.YAMLError):
    """Aliases (``*name``) that expand a small file into a huge one ("a billion laughs")."""

    def __init__(self, limit: int, line: int) -> None:
        super().__init__(f"aliases expand the file past {limit:,} values")
        self.line = line


#: The most values (scalars, mappings, lists) a flow file may hold once its aliases are expanded.
MAX_EXPANDED = 200_000


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false. In YAML 1.1 a bare ``yes``, ``no``,
    ``on`` or ``off`` becomes a boolean, which turns ``when: yes`` or ``choice: [yes, no]`` in
    a flow into nonsense.

    Composing and constructing recurse once per level of nesting, so the depth is counted as
    nodes are composed and a file nested past ``max_depth`` is refused long before Python's
    recursion limit (20,000 nested ``[`` would otherwise raise RecursionError). Each node's size
    with its aliases expanded is counted too (once per node, from its children's), so a few
    lines of nested aliases cannot make validation print or walk a billion values."""

    max_depth = 32
    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            line = self.peek_event().start_mark.line + 1  # type: ignore[no-untyped-call]
            if self._depth > self.max_depth:
                raise TooDeep(self.max_depth, line)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        sizes: dict[int, int] = self.__dict__.setdefault("_sizes", {})
        if id(node) not in sizes:
            if isinstance(node, yaml.SequenceNode):
                size = 1 + sum(sizes.get(id(c), 1) for c in node.value)
            elif isinstance(node, yaml.MappingNode):
                size = 1 + sum(sizes.get(id(k), 1) + sizes.get(id(v), 1) for k, v in node.value)
            else:
                size = 1
            if size > MAX_EXPANDED:
                raise TooLarge(MAX_EXPANDED, line)
            sizes[id(node)] = size
        return node


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    seen: dict[str, int] = {}
    starts: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        if key in seen:
            raise DuplicateKey(key, key_node.start_mark.line + 1)
        seen[key] = key_node.start_mark.line + 1
        block = isinstance(value_node, yaml.ScalarNode) and value_node.style in ("|", ">")
        starts[key] = value_node.start_mark.line + 1 + (1 if block else 0)
    out = LineDict({str(k): v for k, v in loader.construct_mapping(node, deep=True).items()})
    out.line = node.start_mark.line + 1
    out.key_lines = seen
    out.value_lines = starts
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load(text: str, max_depth: int = 32) -> Any:
    """Parse YAML text; mappings come back as :class:`LineDict`. :class:`TooDeep` past
    ``max_depth`` levels of mappings and lists."""
    loader = _Loader(text)
    loader.max_depth = max_depth
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
