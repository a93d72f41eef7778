"""The console's SVG charts (engine/console/charts.py): their geometry (what a reader compares:
bar heights, funnel widths, where an interval and the zero line fall), the numbers said in text,
and hostile labels shown as text, never markup."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.console import charts
from engine.console.charts import Bar, Interval

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = '<script>alert("x")</script>&<b onload=x>'


def parse(markup: str) -> ET.Element:
    root = ET.fromstring(str(markup))
    assert root.tag == f"{SVG}svg" and root.get("role") == "img"
    return root


def rects(root: ET.Element) -> list[ET.Element]:
    return list(root.iter(f"{SVG}rect"))


def texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


def test_bars_are_as_high_as_their_values_and_say_them() -> None:
    svg = charts.bar_chart([Bar("0", 1), Bar("9", 4, "promoter"), Bar("10", 2), Bar("5", 0)], title="NPS")
    root = parse(svg)
    heights = [float(r.get("height", "")) for r in rects(root)]
    assert heights[1] == max(heights) and heights[3] == 0
    assert heights[0] == pytest.approx(heights[1] / 4) and heights[2] == pytest.approx(heights[1] / 2)
    bottoms = {round(float(r.get("y", "")) + float(r.get("height", "")), 2) for r in rects(root)}
    assert len(bottoms) == 1  # every bar stands on the same baseline
    assert rects(root)[1].get("fill") == charts.TONES["promoter"]
    assert root.findtext(f"{SVG}title") == "NPS"
    assert root.findtext(f"{SVG}desc") == "0: 1; 9: 4; 10: 2; 5: 0"
    assert {"1", "4", "2", "0"} <= set(texts(root))


@given(st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=30))
def test_bars_fit_their_box_whatever_the_values(values: list[int]) -> None:
    boxes = charts.bar_boxes(values, 480, 200, 18, 22)
    for b, v in zip(boxes, values, strict=True):
        assert b.x >= 0 and b.x + b.w <= 480 + 1e-9
        assert b.y >= 18 - 1e-9 and b.y + b.h == pytest.approx(178)
        assert (b.h == 0) == (v == 0)
    assert [b.x for b in boxes] == sorted(b.x for b in boxes)


def test_a_funnel_narrows_with_its_counts_and_gives_shares() -> None:
    root = parse(charts.funnel([("started", 10), ("past ask_score", 8), ("completed", 5)], title="Drop-off"))
    widths = [float(r.get("width", "")) for r in rects(root)]
    assert widths[1] == pytest.approx(widths[0] * 0.8) and widths[2] == pytest.approx(widths[0] / 2)
    centres = {round(float(r.get("x", "")) + float(r.get("width", "")) / 2, 2) for r in rects(root)}
    assert len(centres) == 1  # centred
    assert "8 (80%)" in texts(root) and "5 (50%)" in texts(root)
    assert root.findtext(f"{SVG}desc") == "started: 10 (100%); past ask_score: 8 (80%); completed: 5 (50%)"


def test_an_interval_is_drawn_where_its_numbers_are_against_the_zero_line() -> None:
    items = [Interval("discount", 0.065, 0.0021, 0.1114, "good"), Interval("plain", -0.02, -0.1, 0.06)]
    root = parse(charts.error_bars(items, title="Lift over the holdout"))
    lo, hi = charts.domain(items)
    x = charts.scale(lo, hi, 120, 480 - 12)
    ref = next(e for e in root.iter(f"{SVG}line") if e.get("class") == "reference")
    assert float(ref.get("x1", "")) == pytest.approx(x(0), abs=0.01)
    first = root.find(f"{SVG}g")
    assert first is not None
    whisker = first.find(f"{SVG}line")
    dot = first.find(f"{SVG}circle")
    assert whisker is not None and dot is not None
    assert float(whisker.get("x1", "")) == pytest.approx(x(0.0021), abs=0.01)
    assert float(whisker.get("x2", "")) == pytest.approx(x(0.1114), abs=0.01)
    assert float(dot.get("cx", "")) == pytest.approx(x(0.065), abs=0.01)
    # this interval excludes 0: the whole whisker lies right of the line
    assert float(whisker.get("x1", "")) > float(ref.get("x1", ""))
    assert "discount: 6.5% (95% interval 0.2% to 11.1%)" in (root.findtext(f"{SVG}desc") or "")


def test_the_axis_always_holds_zero_and_every_interval() -> None:
    lo, hi = charts.domain([Interval("a", 0.3, 0.2, 0.4)])
    assert lo < 0 < 0.4 < hi
    assert charts.domain([]) == (-0.05, 0.05)


def test_a_sparkline_spans_its_box_from_lowest_to_highest() -> None:
    pts = charts.spark_points([3, 1, 5], 100, 20, pad=2)
    assert [p[0] for p in pts] == [2, 50, 98]
    assert pts[1][1] == 18 and pts[2][1] == 2  # lowest at the bottom, highest at the top
    assert charts.spark_points([4, 4], 100, 20)[0][1] == 10  # flat: the middle
    root = parse(charts.sparkline([3, 1, 5], title="turns/s"))
    assert root.findtext(f"{SVG}desc") == "3 values; first 3, last 5, lowest 1, highest 5"


def test_a_stacked_bar_splits_its_width_by_share() -> None:
    parts = [
        Bar("sent", 6, "good"),
        Bar("skipped", 0),
        Bar("cancelled", 2, "bad"),
        Bar("waiting", 2, "muted"),
    ]
    assert charts.stack_widths([p.value for p in parts], 100) == [(0, 60), (60, 0), (60, 20), (80, 20)]
    root = parse(charts.stacked_bar(parts, title="progress", width=100))
    drawn = [r for r in rects(root) if r.get("class", "").startswith("part")]
    assert [r.get("width") for r in drawn] == ["60", "20", "20"]  # a zero part is not drawn
    assert (
        root.findtext(f"{SVG}desc") == "sent: 6 (60%); skipped: 0 (0%); cancelled: 2 (20%); waiting: 2 (20%)"
    )
    assert charts.stack_widths([0, 0], 100) == [(0, 0), (0, 0)]


@pytest.mark.parametrize(
    "draw",
    [
        lambda: charts.bar_chart([Bar(HOSTILE, 1, HOSTILE)], title=HOSTILE),
        lambda: charts.funnel([(HOSTILE, 3)], title=HOSTILE),
        lambda: charts.error_bars([Interval(HOSTILE, 0, -1, 1, HOSTILE)], title=HOSTILE),
        lambda: charts.sparkline([1, 2], title=HOSTILE),
        lambda: charts.stacked_bar([Bar(HOSTILE, 1, HOSTILE)], title=HOSTILE),
    ],
    ids=["bar", "funnel", "intervals", "spark", "stack"],
)
def test_a_hostile_name_is_text_not_markup(draw: object) -> None:
    svg = str(draw())  # type: ignore[operator]
    assert "<script" not in svg and "<b " not in svg
    root = parse(svg)  # well-formed: nothing broke out of its element or attribute
    assert root.findtext(f"{SVG}title") == HOSTILE
    assert not list(root.iter(f"{SVG}script"))


def test_numbers_read_as_a_person_writes_them() -> None:
    assert [charts.number(v) for v in (12, 12.0, 0.25, 3.456, None)] == ["12", "12", "0.25", "3.46", "—"]
    assert [charts.percent(v) for v in (0.8, 0.0524, 1, None)] == ["80%", "5.2%", "100%", "—"]
