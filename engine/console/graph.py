"""A flow drawn as inline SVG by our own code: a layered layout, top to bottom, no JavaScript.

The layout is the classic layered one (Sugiyama's, simplified), in four steps:

1. **Cycles broken**: a depth-first walk from the start node (then from any node not reached)
   marks the edges that go back to a node still on the walk's path (a reprompt loop, "reply NO
   to go back"): they are drawn, but left out of the layering.
2. **Layers**: each node sits one layer below the lowest of the nodes that lead to it (longest
   path from the sources), so every forward edge points down.
3. **Order within a layer**: starts in walk order, then a few sweeps down and up move each node
   towards the mean position of its neighbours in the layer above (below), which uncrosses most
   edges of a tree-like flow.
4. **Coordinates**: one grid cell per (layer, position), cells apart by a gap, each layer
   centred: nodes never overlap, whatever the flow.

Forward edges are curves from the bottom of one node to the top of the other; edges back up
(and to the same layer) go round the right-hand side. Every edge carries its label: the reply
test or condition of a case (with its category), ``otherwise``, a timeout (``no reply in 4h``,
dashed), a reprompt's giving-up (dotted), a call's answered / failed routes. A node shows its
name, its kind (wait, route, step, call; exits as ``end: outcome``, ``handoff: reason``,
``start: flow``), the start of what it says, the fields it sets and tags it adds, and two
counts the page hands in: contacts waiting there now, and runs that dropped off there.

Every text goes through :func:`markupsafe.escape`: a flow's text or label is data, never markup.
Iterative throughout (a flow may have a thousand nodes; no recursion).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from markupsafe import Markup, escape

from engine.flows.graph import say_text
from engine.flows.model import Flow, Node

NODE_W = 232
NODE_H = 92
GAP_X = 56
GAP_Y = 88
MARGIN = 24
#: Room on the right for edges that go back up.
BACK_ROOM = 96
#: Down-and-up sweeps of the ordering step.
SWEEPS = 4
SAY_CHARS = 36
#: Width of a long edge's waypoint in a layer it crosses.
WAY_W = 18
#: Vertical room per edge label below a node.
LABEL_GAP = 15
LABEL_CHARS = 30


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    label: str
    #: case | default | timeout | reprompt | goto | success | failure
    kind: str


@dataclass
class Box:
    name: str
    layer: int
    x: float = 0.0
    y: float = 0.0

    def overlaps(self, other: Box) -> bool:
        return (
            self.x < other.x + NODE_W
            and other.x < self.x + NODE_W
            and self.y < other.y + NODE_H
            and other.y < self.y + NODE_H
        )


@dataclass
class Layout:
    boxes: dict[str, Box]
    edges: list[Edge]
    #: Edges left out of the layering to break cycles, and edges within a layer: drawn round
    #: the right-hand side of the drawing.
    back: set[int] = field(default_factory=set)
    #: Forward edges that skip layers: the points (centre x, layer top y, layer bottom y) they
    #: pass through in each layer between, so they go between nodes rather than over them.
    bends: dict[int, list[tuple[float, float, float]]] = field(default_factory=dict)
    width: float = 0.0
    height: float = 0.0


#: Number tests as a person writes them on an edge: ``number_between [9, 10]`` is ``9 to 10``.
_NUMBER_TESTS = (
    (re.compile(r"^number_between \[(-?[\d.]+), (-?[\d.]+)\]$"), "{0} to {1}"),
    (re.compile(r"^number_equal (-?[\d.]+)$"), "= {0}"),
    (re.compile(r"^number_less (-?[\d.]+)$"), "< {0}"),
    (re.compile(r"^number_greater (-?[\d.]+)$"), "> {0}"),
)


def readable(label: str) -> str:
    """A case's test as short as an edge needs it (number tests as ranges and comparisons;
    anything else as the flow says it)."""
    for pattern, form in _NUMBER_TESTS:
        m = pattern.match(label)
        if m:
            return form.format(*m.groups())
    return label


def edges_of(node: Node) -> list[Edge]:
    """Every way out of a node to another node, labelled as a person reads it."""
    out = []
    for c in node.cases:
        test = readable(c.label)
        label = f"{test} → {c.category}" if c.category != c.goto else test
        out.append(Edge(node.name, c.goto, label, "case"))
    if node.default:
        out.append(Edge(node.name, node.default, "otherwise" if node.cases else "any reply", "default"))
    if node.reprompt and node.reprompt.after:
        label = f"no match, {node.reprompt.max} reprompts"
        out.append(Edge(node.name, node.reprompt.after, label, "reprompt"))
    if node.timeout_goto:
        out.append(
            Edge(node.name, node.timeout_goto, f"no reply in {duration(node.timeout or 0)}", "timeout")
        )
    if node.goto:
        out.append(Edge(node.name, node.goto, "", "goto"))
    if node.call:
        out.append(Edge(node.name, node.call.success, f"{node.call.method} answered", "success"))
        out.append(
            Edge(
                node.name,
                node.call.failure,
                f"failed or no answer in {duration(node.call.timeout)}",
                "failure",
            )
        )
    return out


def duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def kind_of(node: Node) -> str:
    """What a node is, in a word or two (exits say where they lead)."""
    if node.end is not None:
        return f"end: {node.end}"
    if node.handoff is not None:
        return f"handoff: {node.handoff}"
    if node.start_flow is not None:
        return f"start: {node.start_flow}"
    if node.wait:
        return "wait"
    if node.call is not None:
        return "call"
    return "route" if node.cases else "step"


def layout(flow: Flow) -> Layout:
    """Place every node of ``flow`` in a grid cell and list its edges (see the module doc)."""
    names = sorted(flow.nodes, key=lambda n: (n != flow.start, flow.nodes[n].line, n))
    edges = [e for n in names for e in edges_of(flow.nodes[n]) if e.target in flow.nodes]
    outs: dict[str, list[int]] = {n: [] for n in names}
    for i, e in enumerate(edges):
        outs[e.source].append(i)

    # 1. Depth-first from the start (then any node not reached): edges into the path are back.
    back: set[int] = set()
    state: dict[str, int] = {}  # 1 on the path, 2 done
    order: list[str] = []
    for root in names:
        if root in state:
            continue
        state[root] = 1
        order.append(root)
        stack = [(root, iter(outs[root]))]
        while stack:
            name, it = stack[-1]
            for i in it:
                target = edges[i].target
                seen = state.get(target)
                if seen == 1:
                    back.add(i)
                elif seen is None:
                    state[target] = 1
                    order.append(target)
                    stack.append((target, iter(outs[target])))
                    break
            else:
                state[name] = 2
                stack.pop()

    # 2. Longest path layering over the forward edges (a topological order by Kahn's walk).
    preds: dict[str, list[str]] = {n: [] for n in names}
    succs: dict[str, list[str]] = {n: [] for n in names}
    indegree = dict.fromkeys(names, 0)
    for i, e in enumerate(edges):
        if i not in back and e.source != e.target:
            succs[e.source].append(e.target)
            preds[e.target].append(e.source)
            indegree[e.target] += 1
    layer = dict.fromkeys(names, 0)
    ready = [n for n in order if indegree[n] == 0]
    while ready:
        n = ready.pop()
        for t in succs[n]:
            layer[t] = max(layer[t], layer[n] + 1)
            indegree[t] -= 1
            if indegree[t] == 0:
                ready.append(t)

    # Long edges get a waypoint in each layer they cross, ordered like a node.
    chains: dict[int, list[str]] = {}
    for i, e in enumerate(edges):
        if i in back or e.source == e.target or layer[e.target] - layer[e.source] < 2:
            continue
        chain = [f"\0{i}:{k}" for k in range(layer[e.source] + 1, layer[e.target])]
        chains[i] = chain
        hops = [e.source, *chain, e.target]
        for k, d in enumerate(chain, layer[e.source] + 1):
            layer[d] = k
            preds[d], succs[d] = [hops[k - layer[e.source] - 1]], [hops[k - layer[e.source] + 1]]
        succs[e.source].append(chain[0])
        preds[e.target].append(chain[-1])

    # 3. Order within layers: walk order (waypoints after their edge's source), then sweeps.
    rank = {n: float(i) for i, n in enumerate(order)}
    for i, chain in chains.items():
        for d in chain:
            rank[d] = rank[edges[i].source] + 0.5
    layers: list[list[str]] = [[] for _ in range(max(layer.values(), default=0) + 1)]
    for n in sorted(layer, key=rank.__getitem__):
        layers[layer[n]].append(n)
    pos = {n: float(i) for row in layers for i, n in enumerate(row)}
    for _ in range(SWEEPS):
        for rows, near in ((layers[1:], preds), (layers[-2::-1], succs)):
            for row in rows:
                centre = {n: _mean([pos[m] for m in near[n]], pos[n]) for n in row}
                row.sort(key=lambda n: (centre[n], pos[n]))
                for i, n in enumerate(row):
                    pos[n] = float(i)

    # 4. Coordinates: each layer's cells left to right (a waypoint is narrow), centred on the
    # widest; a layer's gap below grows with the most labels one of its nodes has there.
    def row_width(row: list[str]) -> float:
        return sum(WAY_W if n.startswith("\0") else NODE_W for n in row) + GAP_X * max(len(row) - 1, 0)

    widest = max((row_width(row) for row in layers), default=NODE_W)
    labelled = {n: sum(1 for i in outs[n] if edges[i].label and i not in back) for n in names}
    boxes: dict[str, Box] = {}
    points: dict[str, tuple[float, float, float]] = {}
    y = bottom = float(MARGIN)
    for li, row in enumerate(layers):
        x = MARGIN + (widest - row_width(row)) / 2
        for n in row:
            if n.startswith("\0"):
                points[n] = (x + WAY_W / 2, y, y + NODE_H)
                x += WAY_W + GAP_X
            else:
                boxes[n] = Box(n, li, x, y)
                x += NODE_W + GAP_X
        most = max((labelled[n] for n in row if n in labelled), default=0)
        bottom = y + NODE_H
        y += NODE_H + max(GAP_Y, LABEL_GAP * (most + 1) + 8)
    bends = {i: [points[d] for d in chain] for i, chain in chains.items()}
    back |= {i for i, e in enumerate(edges) if layer[e.target] <= layer[e.source]}
    width = 2 * MARGIN + widest + (BACK_ROOM + 6 * len(back) if back else 0)
    return Layout(boxes, edges, back, bends, width, bottom + MARGIN)


def _mean(values: list[float], default: float) -> float:
    return sum(values) / len(values) if values else default


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _say_lines(node: Node) -> list[str]:
    """What the node says, plain, in up to two lines of :data:`SAY_CHARS`."""
    if not node.say:
        return []
    words = say_text(node, 200).split(" ")
    lines = [""]
    for w in words:
        if len(lines[-1]) + len(w) + 1 > SAY_CHARS and lines[-1]:
            if len(lines) == 2:
                lines[-1] = lines[-1] + " …"
                break
            lines.append("")
        lines[-1] = f"{lines[-1]} {w}".strip()
    return [_short(x, SAY_CHARS + 2) for x in lines if x]


def _node_svg(
    flow: Flow, node: Node, box: Box, waiting: int | None, dropped: int | None, current: bool
) -> str:
    kind = kind_of(node)
    cls = "node " + (
        "exit end" if node.end is not None
        else "exit handoff" if node.handoff is not None
        else "exit start-flow" if node.start_flow is not None
        else "wait" if node.wait
        else "call" if node.call is not None
        else "route"
    )  # fmt: skip
    if node.name == flow.start:
        cls += " start"
    if current:
        cls += " current"
    x, y = box.x, box.y
    parts = [
        f'<g class="{cls}" data-node="{escape(node.name)}" transform="translate({x:g},{y:g})">',
        f"<title>{escape(node.name)} ({escape(kind)})</title>",
        f'<rect width="{NODE_W}" height="{NODE_H}" rx="8"/>',
        f'<text class="name" x="10" y="20">{escape(_short(node.name, 22))}</text>',
        f'<text class="kind" x="{NODE_W - 10}" y="20" text-anchor="end">{escape(_short(kind, 18))}</text>',
    ]
    for i, line in enumerate(_say_lines(node)):
        parts.append(f'<text class="say" x="10" y="{40 + i * 16}">{escape(line)}</text>')
    badges = []
    if waiting:
        badges.append(("waiting", f"{waiting:,} waiting"))
    if dropped:
        badges.append(("dropped", f"{dropped:,} dropped"))
    bx = NODE_W - 8
    for cls_, text in reversed(badges):
        w = 7 * len(text) + 10
        bx -= w
        parts.append(
            f'<g class="badge {cls_}"><rect x="{bx}" y="{NODE_H - 24}" width="{w}" height="18" rx="9"/>'
            f'<text x="{bx + w / 2:g}" y="{NODE_H - 11}" text-anchor="middle">{escape(text)}</text></g>'
        )
        bx -= 4
    effects = [f"{k} =" for k in node.sets] + [f"#{t}" for t in node.tags]
    if node.save:
        effects.insert(0, f"saves {node.save}")
    if effects:
        room = max(4, int((bx - 10) / 6.5))
        parts.append(
            f'<text class="effects" x="10" y="{NODE_H - 10}">{escape(_short(" ".join(effects), room))}</text>'
        )
    parts.append("</g>")
    return "".join(parts)


def _curve(x0: float, y0: float, x3: float, y3: float) -> tuple[float, float, float, float]:
    """Control points of a downward curve leaving and arriving vertically."""
    bend = max(24.0, (y3 - y0) / 2)
    return x0, y0 + bend, x3, y3 - bend


def _at_y(seg: tuple[float, ...], y: float) -> float:
    """The x of a downward cubic segment (x0, y0, x1, y1, x2, y2, x3, y3) where it crosses y."""
    x0, y0, x1, y1, x2, y2, x3, y3 = seg
    lo, hi = 0.0, 1.0
    for _ in range(24):
        t = (lo + hi) / 2
        yt = (1 - t) ** 3 * y0 + 3 * (1 - t) ** 2 * t * y1 + 3 * (1 - t) * t * t * y2 + t**3 * y3
        lo, hi = (t, hi) if yt < y else (lo, t)
    t = (lo + hi) / 2
    return (1 - t) ** 3 * x0 + 3 * (1 - t) ** 2 * t * x1 + 3 * (1 - t) * t * t * x2 + t**3 * x3


def _edge_svg(lay: Layout, i: int, edge: Edge, slot: tuple[float, float], nth: int, lane: float) -> str:
    """One edge: a path with an arrow head, and its label (the ``nth`` of its source's)."""
    a, b = lay.boxes[edge.source], lay.boxes[edge.target]
    if i in lay.back:
        # Round the right-hand side, in this edge's own lane beyond every node.
        x0, y0 = a.x + NODE_W, a.y + NODE_H / 2 + slot[0]
        x3, y3 = b.x + NODE_W, b.y + NODE_H / 2 + slot[1]
        if edge.source == edge.target:
            y3 = y0 + 16 if y0 + 16 < a.y + NODE_H else y0 - 16
        c = x0 + (lane - x0) * 4 / 3
        d = f"M{x0:g},{y0:g} C{c:g},{y0:g} {c:g},{y3:g} {x3:g},{y3:g}"
        lx, ly, anchor = x0 + 6, y0 - 5, "start"
    else:
        x0, y0 = a.x + NODE_W / 2 + slot[0], a.y + NODE_H
        x3, y3 = b.x + NODE_W / 2 + slot[1], b.y
        way = [(x0, y0)]
        for cx, top, bottom in lay.bends.get(i, []):
            way += [(cx, top), (cx, bottom)]
        way.append((x3, y3))
        d = f"M{x0:g},{y0:g}"
        first: tuple[float, ...] = ()
        for k in range(0, len(way) - 1, 2):
            (p, q), (r, s_) = way[k], way[k + 1]
            seg = (p, q, *_curve(p, q, r, s_), r, s_)
            first = first or seg
            d += " C{:g},{:g} {:g},{:g} {:g},{:g}".format(*seg[2:])
            if k + 2 < len(way):  # straight down through the layer it crosses
                d += f" L{way[k + 2][0]:g},{way[k + 2][1]:g}"
        ly = y0 + LABEL_GAP * (nth + 1) - 3
        lx, anchor = _at_y(first, ly - 4), "middle"
    label = ""
    if edge.label:
        label = (
            f'<text class="label" x="{lx:g}" y="{ly:g}" text-anchor="{anchor}">'
            f"{escape(_short(edge.label, LABEL_CHARS))}</text>"
        )
    title = f"{edge.source} → {edge.target}" + (f": {edge.label}" if edge.label else "")
    return (
        f'<g class="edge {edge.kind}" data-from="{escape(edge.source)}" data-to="{escape(edge.target)}">'
        f'<title>{escape(title)}</title><path d="{d}" marker-end="url(#arrow)"/>{label}</g>'
    )


def svg(
    flow: Flow,
    waiting: Mapping[str, int] | None = None,
    dropped: Mapping[str, int] | None = None,
    current: str | None = None,
) -> Markup:
    """``flow`` as an inline ``<svg>`` (safe to put in a page as it is): nodes with their counts
    of contacts ``waiting`` there now and runs ``dropped`` off there, edges with their labels;
    the ``current`` node (where the simulator waits) outlined."""
    lay = layout(flow)
    waiting, dropped = waiting or {}, dropped or {}
    # Spread the ends of a node's several edges along its side, so they do not start as one.
    out_slots = _slots([e.source for e in lay.edges])
    in_slots = _slots([e.target for e in lay.edges])
    nth: dict[str, int] = {}
    lanes = lay.width - MARGIN - 6 * len(lay.back)
    edges = []
    for i, e in enumerate(lay.edges):
        k = nth.get(e.source, 0)
        if e.label and i not in lay.back:
            nth[e.source] = k + 1
        lane = lanes + 6 * sorted(lay.back).index(i) if i in lay.back else 0.0
        edges.append(_edge_svg(lay, i, e, (out_slots[i], in_slots[i]), k, lane))
    nodes = [
        _node_svg(flow, flow.nodes[n], lay.boxes[n], waiting.get(n), dropped.get(n), n == current)
        for n in lay.boxes
    ]
    return Markup(
        f'<svg class="flow-graph" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'width="{lay.width:g}" height="{lay.height:g}" viewBox="0 0 {lay.width:g} {lay.height:g}" '
        f'aria-label="{escape(f"flow {flow.name}: {len(flow.nodes)} nodes")}">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>'
        f'<g class="edges">{"".join(edges)}</g><g class="nodes">{"".join(nodes)}</g></svg>'
    )


def _slots(ends: list[str]) -> list[float]:
    """For each edge end at a node, an offset from the side's middle (spread 14 px apart)."""
    count: dict[str, int] = {}
    for n in ends:
        count[n] = count.get(n, 0) + 1
    seen: dict[str, int] = {}
    out = []
    for n in ends:
        k = seen.get(n, 0)
        seen[n] = k + 1
        step = min(14.0, (NODE_H - 16) / max(count[n], 1))
        out.append((k - (count[n] - 1) / 2) * step)
    return out
