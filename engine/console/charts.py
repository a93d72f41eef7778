"""Charts as inline SVG, drawn here (no third-party code, nothing fetched by the browser).

Every chart is a ``<svg role="img">`` whose ``<title>`` names it and whose ``<desc>`` says every
number in words, so a screen reader (or a test) reads the data without looking at shapes; each
mark also carries its own ``<title>`` (a tooltip on hover). Every text that came from outside (a
flow's or a node's name, an arm's) is escaped here, so a chart is safe to drop into a template
as it is (it is returned as :class:`markupsafe.Markup`).

Geometry is plain arithmetic on the chart's box (``width`` x ``height`` user units; the SVG
scales to its container through ``viewBox``), kept in small pure functions that the tests check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

#: Fill colours by tone (presentation attributes, so a chart looks right without the stylesheet;
#: the CSS may override them through the ``tone-*`` classes).
TONES = {
    "": "#4c78a8",
    "promoter": "#2e7d32",
    "passive": "#9e9e9e",
    "detractor": "#c62828",
    "good": "#2e7d32",
    "bad": "#c62828",
    "muted": "#9e9e9e",
    "warn": "#b26a00",
}
TEXT = "#222"
#: Labels longer than this are cut (with …) on the chart; the mark's ``<title>`` keeps them whole.
LABEL_MAX = 22


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    tone: str = ""


@dataclass(frozen=True)
class Interval:
    """An estimate with its interval, e.g. an arm's lift over the holdout and its 95% CI."""

    label: str
    estimate: float
    low: float
    high: float
    tone: str = ""


def number(v: float | None, digits: int = 2) -> str:
    """A number as a person reads it: 12, 0.25, 3.5 (no trailing zeros); None as an em dash."""
    if v is None:
        return "—"
    if float(v).is_integer():
        return str(int(v))
    return f"{v:.{digits}f}".rstrip("0").rstrip(".")


def percent(v: float | None, digits: int = 1) -> str:
    """A proportion (0..1) as a percentage: 0.8 -> 80%, 0.0524 -> 5.2%."""
    if v is None:
        return "—"
    return number(round(100 * v, digits), digits) + "%"


def short(label: str, limit: int = LABEL_MAX) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _f(v: float) -> str:
    """A coordinate: at most two decimals, no trailing zeros (small, stable SVG)."""
    return number(round(v, 2))


def _fill(tone: str) -> str:
    return TONES.get(tone, TONES[""])


def _svg(kind: str, width: float, height: float, title: str, desc: str, body: list[str]) -> Markup:
    head = (
        f'<svg class="chart chart-{kind}" role="img" viewBox="0 0 {_f(width)} {_f(height)}" '
        f'width="{_f(width)}" height="{_f(height)}" preserveAspectRatio="xMinYMin meet" '
        f'xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title><desc>{escape(desc)}</desc>"
    )
    return Markup(head + "".join(body) + "</svg>")


def _text(x: float, y: float, content: str, anchor: str = "middle", cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return (
        f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}" font-size="11" fill="{TEXT}"{c}>'
        f"{escape(content)}</text>"
    )


# -- bar chart ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float


def bar_boxes(values: Sequence[float], width: float, height: float, top: float, bottom: float) -> list[Box]:
    """Vertical bars side by side: each in an equal slot (70% of it), heights proportional to
    the values with the largest reaching the top of the plot; a 0 (or negative) is 0 high."""
    n = len(values)
    if not n:
        return []
    peak = max(max(values), 0) or 1
    plot_h = height - top - bottom
    slot = width / n
    w = slot * 0.7
    out = []
    for i, v in enumerate(values):
        h = max(v, 0) / peak * plot_h
        out.append(Box(i * slot + (slot - w) / 2, top + plot_h - h, w, h))
    return out


def bar_chart(
    bars: Sequence[Bar],
    *,
    title: str,
    width: float = 480,
    height: float = 200,
    fmt: Callable[[float], str] = number,
) -> Markup:
    """Vertical bars with their values above and their labels below."""
    top, bottom = 18.0, 22.0
    boxes = bar_boxes([b.value for b in bars], width, height, top, bottom)
    body = [f'<line x1="0" x2="{_f(width)}" y1="{_f(height - bottom)}" y2="{_f(height - bottom)}" '
            f'stroke="#888" stroke-width="1"/>']  # fmt: skip
    for b, box in zip(bars, boxes, strict=True):
        tone = f" tone-{escape(b.tone)}" if b.tone else ""
        body.append(
            f'<g class="mark{tone}"><title>{escape(b.label)}: {escape(fmt(b.value))}</title>'
            f'<rect x="{_f(box.x)}" y="{_f(box.y)}" width="{_f(box.w)}" height="{_f(box.h)}" '
            f'fill="{_fill(b.tone)}"/>'
            + _text(box.x + box.w / 2, box.y - 4, fmt(b.value), cls="value")
            + _text(box.x + box.w / 2, height - bottom + 14, short(b.label, 10), cls="label")
            + "</g>"
        )
    desc = "; ".join(f"{b.label}: {fmt(b.value)}" for b in bars) or "no data"
    return _svg("bar", width, height, title, desc, body)


# -- funnel ------------------------------------------------------------------------------------


def funnel_boxes(counts: Sequence[float], width: float, row: float, gap: float) -> list[Box]:
    """One centred bar per step, its width proportional to its count against the first (or
    the largest, if a later one is larger); ``row`` high, ``gap`` between rows."""
    peak = max([*counts, 0]) or 1
    out = []
    for i, c in enumerate(counts):
        w = max(c, 0) / peak * width
        out.append(Box((width - w) / 2, i * (row + gap), w, row))
    return out


def funnel(
    steps: Sequence[tuple[str, int]], *, title: str, width: float = 480, label_w: float = 150
) -> Markup:
    """Steps top to bottom as centred bars (e.g. runs still going after each node), each with
    its label on the left and its count and share of the first step on the right."""
    row, gap, count_w = 22.0, 6.0, 90.0
    plot_w = width - label_w - count_w
    boxes = funnel_boxes([c for _, c in steps], plot_w, row, gap)
    first = steps[0][1] if steps else 0
    body = []
    parts = []
    for (label, c), box in zip(steps, boxes, strict=True):
        share = f" ({percent(c / first)})" if first else ""
        parts.append(f"{label}: {c}{share}")
        mid = box.y + row / 2 + 4
        body.append(
            f'<g class="step"><title>{escape(label)}: {c}{escape(share)}</title>'
            + _text(label_w - 6, mid, short(label), anchor="end", cls="label")
            + f'<rect x="{_f(label_w + box.x)}" y="{_f(box.y)}" width="{_f(box.w)}" height="{_f(row)}" '
            f'fill="{_fill("")}"/>'
            + _text(label_w + plot_w + 6, mid, f"{c}{share}", anchor="start", cls="value")
            + "</g>"
        )
    height = max(len(steps) * (row + gap) - gap, row)
    return _svg("funnel", width, height, title, "; ".join(parts) or "no data", body)


# -- estimates with error bars -----------------------------------------------------------------


def scale(low: float, high: float, x0: float, x1: float) -> Callable[[float], float]:
    """A linear map of [low, high] onto [x0, x1] (a degenerate domain maps to the middle)."""
    if high <= low:
        return lambda v: (x0 + x1) / 2
    k = (x1 - x0) / (high - low)
    return lambda v: x0 + (v - low) * k


def domain(items: Sequence[Interval], reference: float = 0.0) -> tuple[float, float]:
    """The axis range: every interval and the reference line, padded by a tenth either side."""
    lo = min([reference, *(i.low for i in items)])
    hi = max([reference, *(i.high for i in items)])
    pad = (hi - lo) * 0.1 or 0.05
    return lo - pad, hi + pad


def error_bars(
    items: Sequence[Interval],
    *,
    title: str,
    width: float = 480,
    label_w: float = 120,
    reference: float = 0.0,
    reference_label: str = "no difference",
    fmt: Callable[[float], str] = percent,
) -> Markup:
    """One row per item: a dot at the estimate, a whisker from low to high, and a dashed
    vertical line at ``reference`` (0: no lift over the holdout); an interval that does not
    cross the line shows a difference at its confidence level."""
    row, top, bottom = 26.0, 8.0, 30.0
    lo, hi = domain(items, reference)
    plot_x0, plot_x1 = label_w, width - 12
    x = scale(lo, hi, plot_x0, plot_x1)
    height = top + max(len(items), 1) * row + bottom
    axis_y = height - bottom
    body = [
        f'<line class="reference" x1="{_f(x(reference))}" x2="{_f(x(reference))}" y1="{_f(top)}" '
        f'y2="{_f(axis_y)}" stroke="#555" stroke-dasharray="4 3"/>',
        f'<line x1="{_f(plot_x0)}" x2="{_f(plot_x1)}" y1="{_f(axis_y)}" y2="{_f(axis_y)}" stroke="#888"/>',
        _text(plot_x0, axis_y + 14, fmt(lo), anchor="start", cls="tick"),
        _text(x(reference), axis_y + 14, f"{fmt(reference)} {reference_label}", cls="tick"),
        _text(plot_x1, axis_y + 14, fmt(hi), anchor="end", cls="tick"),
    ]
    parts = []
    for i, it in enumerate(items):
        y = top + i * row + row / 2
        said = f"{it.label}: {fmt(it.estimate)} (95% interval {fmt(it.low)} to {fmt(it.high)})"
        parts.append(said)
        body.append(
            f'<g class="interval tone-{escape(it.tone) or "plain"}"><title>{escape(said)}</title>'
            + _text(label_w - 6, y + 4, short(it.label, 18), anchor="end", cls="label")
            + f'<line x1="{_f(x(it.low))}" x2="{_f(x(it.high))}" y1="{_f(y)}" y2="{_f(y)}" '
            f'stroke="{_fill(it.tone)}" stroke-width="2"/>'
            + "".join(
                f'<line x1="{_f(x(v))}" x2="{_f(x(v))}" y1="{_f(y - 6)}" y2="{_f(y + 6)}" '
                f'stroke="{_fill(it.tone)}" stroke-width="2"/>'
                for v in (it.low, it.high)
            )
            + f'<circle cx="{_f(x(it.estimate))}" cy="{_f(y)}" r="4" fill="{_fill(it.tone)}"/>'
            + "</g>"
        )
    return _svg("intervals", width, height, title, "; ".join(parts) or "no data", body)


# -- sparkline ---------------------------------------------------------------------------------


def spark_points(
    values: Sequence[float], width: float, height: float, pad: float = 2
) -> list[tuple[float, float]]:
    """(x, y) of each value: evenly spaced, the lowest at the bottom and the highest at the top
    (a flat series sits in the middle)."""
    n = len(values)
    if not n:
        return []
    lo, hi = min(values), max(values)
    y = scale(lo, hi, height - pad, pad)
    step = (width - 2 * pad) / (n - 1) if n > 1 else 0
    return [(pad + i * step, y(v)) for i, v in enumerate(values)]


def sparkline(
    values: Sequence[float], *, title: str, width: float = 120, height: float = 28,
    fmt: Callable[[float], str] = number,
) -> Markup:  # fmt: skip
    """A small line of recent values, no axes; the desc gives the first, last, lowest, highest."""
    pts = spark_points(values, width, height)
    body = []
    if pts:
        path = " ".join(f"{_f(px)},{_f(py)}" for px, py in pts)
        body.append(f'<polyline points="{path}" fill="none" stroke="{_fill("")}" stroke-width="1.5"/>')
        desc = (
            f"{len(values)} values; first {fmt(values[0])}, last {fmt(values[-1])}, "
            f"lowest {fmt(min(values))}, highest {fmt(max(values))}"
        )
    else:
        desc = "no data"
    return _svg("spark", width, height, title, desc, body)


# -- stacked bar (a progress bar) ----------------------------------------------------------------


def stack_widths(values: Sequence[float], width: float) -> list[tuple[float, float]]:
    """(x, w) of each part laid end to end, widths proportional to the values' share of their
    sum (all zero: nothing drawn)."""
    total = sum(max(v, 0) for v in values)
    out, x = [], 0.0
    for v in values:
        w = max(v, 0) / total * width if total else 0.0
        out.append((x, w))
        x += w
    return out


def stacked_bar(parts: Sequence[Bar], *, title: str, width: float = 320, height: float = 14) -> Markup:
    """One bar split into its parts (e.g. a start's deliveries: sent, skipped, cancelled,
    waiting), each part titled with its label, count and share."""
    total = sum(max(p.value, 0) for p in parts)
    body = [f'<rect class="track" x="0" y="0" width="{_f(width)}" height="{_f(height)}" fill="#eee"/>']
    said = []
    for p, (x, w) in zip(parts, stack_widths([p.value for p in parts], width), strict=True):
        share = f" ({percent(p.value / total)})" if total else ""
        said.append(f"{p.label}: {number(p.value)}{share}")
        if w > 0:
            tone = f" tone-{escape(p.tone)}" if p.tone else ""
            body.append(
                f'<rect class="part{tone}" x="{_f(x)}" y="0" width="{_f(w)}" height="{_f(height)}" '
                f'fill="{_fill(p.tone)}"><title>{escape(said[-1])}</title></rect>'
            )
    return _svg("stack", width, height, title, "; ".join(said) or "no data", body)
