"""The Reports page's reading of a report (engine/console/report_view.py): the rates as text,
NPS bars, the drop-off funnel in the flow's order, arms against the holdout, the CSV rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.console import report_view
from engine.flows.registry import FlowRegistry

#: The report of docs/api.md#results-and-reports (ten customers, the NPS survey).
REPORT: dict[str, Any] = {
    "flow": "nps",
    "runs": {"started": 10, "completed": 6, "expired": 3, "unanswered": 0, "in_progress": 0,
             "outcomes": {"completed": 6, "expired": 3, "opted_out": 1}},
    "response_rate": 0.8, "opt_out_rate": 0.1, "median_time_to_reply_s": 45.0,
    "messages": {"total": 24, "delivered": 20, "failed": 1, "expired": 0, "rejected": 0, "blocked": 0,
                 "awaiting_receipt": 3, "delivery_rate": 0.9524},
    "governance_messages": {},
    "nps": {"nps_score": {"respondents": 8, "promoters": 4, "passives": 2, "detractors": 2, "score": 25.0,
                          "distribution": [0, 0, 0, 1, 0, 1, 0, 1, 1, 2, 2]}},
    "experiments": {"winter": {"arms": {
        "holdout": {"assigned": 118, "started": 0, "converted": 6, "conversion_rate": 0.0508, "value": 0},
        "discount": {"assigned": 354, "started": 350, "converted": 41, "conversion_rate": 0.1158, "value": 0,
                     "lift": 0.065, "lift_ci95": [0.0021, 0.1114], "relative_lift": 1.2778,
                     "small_sample": False, "conclusive": True},
        "plain": {"assigned": 350, "started": 350, "converted": 20, "conversion_rate": 0.0571, "value": 0,
                  "lift": 0.0063, "lift_ci95": [-0.05, 0.05], "relative_lift": 0.12,
                  "small_sample": False, "conclusive": False}}}},
    "drop_off": [{"node": "ask_detractor", "runs": 1}, {"node": "ask_score", "runs": 2},
                 {"node": "ask_passive", "runs": 1}],
}  # fmt: skip


def nps_flow() -> Any:
    return FlowRegistry.from_dir(Path(__file__).parent.parent / "rules").get("nps")


def test_rates_read_as_percentages_with_what_they_are_out_of() -> None:
    got = {r.name: (r.value, r.detail) for r in report_view.rates(REPORT)}
    assert got["Completion rate"] == ("60%", "6 of 10 runs")
    assert got["Response rate"][0] == "80%" and got["Opt-out rate"][0] == "10%"
    assert got["Delivery rate"] == ("95.2%", "20 of 21 messages with a known fate")
    assert got["Median time to reply"][0] == "45 s"


def test_nps_bars_run_from_0_to_10_coloured_by_category() -> None:
    bars = report_view.nps_bars(REPORT["nps"]["nps_score"])
    assert [b.label for b in bars] == [str(i) for i in range(11)]
    assert [b.value for b in bars] == [0, 0, 0, 1, 0, 1, 0, 1, 1, 2, 2]
    assert {bars[6].tone, bars[7].tone, bars[9].tone} == {"detractor", "passive", "promoter"}


def test_the_funnel_follows_the_flow_and_ends_at_the_completed_runs() -> None:
    flow = nps_flow()
    assert report_view.node_order(flow)[:2] == ["ask_score", "ask_promoter"]
    steps = report_view.funnel_steps(REPORT, flow)
    assert steps == [("started", 10), ("past ask_score", 8), ("past ask_passive", 7),
                     ("past ask_detractor", 6), ("completed", 6)]  # fmt: skip
    running = {**REPORT, "runs": {**REPORT["runs"], "in_progress": 2, "completed": 4}}
    assert report_view.funnel_steps(running, flow)[:2] == [("started", 10), ("ended", 8)]


def test_arms_say_whether_they_beat_the_holdout() -> None:
    rows, marks = report_view.experiment_arms(REPORT["experiments"]["winter"])
    by = {r.name: r for r in rows}
    assert by["holdout"].verdict == "the baseline" and by["holdout"].lift == ""
    assert by["discount"].verdict == "better than the holdout"
    assert by["discount"].interval == "0.2% to 11.1%" and by["discount"].lift == "6.5%"
    assert by["plain"].verdict == "no clear difference"
    assert [(m.label, m.tone) for m in marks] == [("discount", "good"), ("plain", "muted")]


def test_the_report_flattens_to_one_row_per_number() -> None:
    rows = dict(report_view.flatten(REPORT))
    assert rows["runs.started"] == 10 and rows["nps.nps_score.distribution.9"] == 2
    assert rows["drop_off.ask_score"] == 2
    assert rows["experiments.winter.arms.discount.lift_ci95.1"] == 0.1114
