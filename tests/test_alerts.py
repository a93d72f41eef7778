"""The shipped alert rules (deploy/prometheus/alerts.yml): well formed, each alert with a case
where it fires; ``promtool check rules`` and ``promtool test rules`` over those cases when
promtool (Debian's ``prometheus`` package) is installed. That they use only what Parley exports
is checked against a live scrape in tests/test_observability.py, with the expression reader
tested here."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.promql import TARGET_LABELS, check_expr, promql

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMTOOL = shutil.which("promtool")


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_the_expression_reader_finds_every_metric_and_label() -> None:
    """The reader the checks above rely on: metric names, matchers, grouping labels; functions,
    keywords, ranges, offsets, numbers and Grafana variables are not taken for metrics."""
    selectors, grouping = promql(
        'histogram_quantile(0.99, sum by (le, gateway) (rate(parley_send_seconds_bucket{job=~"$job", '
        'lane="reply"}[$__rate_interval]))) > 0.02 and sum(increase(parley_inbound_total{result="accepted"}'
        "[1h] offset 10m)) >= 6e1 unless max_over_time(sum by (gateway) (parley_smpp_binds_up)[1h:1m]) == bool 0"
    )
    assert [(s.metric, s.matchers) for s in selectors] == [
        ("parley_send_seconds_bucket", [("job", "=~", "$job"), ("lane", "=", "reply")]),
        ("parley_inbound_total", [("result", "=", "accepted")]),
        ("parley_smpp_binds_up", []),
    ]
    assert grouping == {"le", "gateway"}
    have: dict[str, dict[str, set[str]] | None] = {
        "parley_inbound_total": {"gateway": {"carrier"}, "result": {"accepted"}}
    }
    assert check_expr('sum by (lane) (parley_inbound_total{result="acepted"})', have, "x") == [
        "x: parley_inbound_total{result='acepted'} never exported (['accepted'])",
        "x: groups by 'lane', a label none of its metrics has",
    ]
    assert check_expr("rate(parley_inbound_totl[5m])", have, "x") == [
        "x: parley_inbound_totl is not exported"
    ]


# -- the alert rules ---------------------------------------------------------------------------

DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def test_the_alert_rules_are_well_formed() -> None:
    """What ``promtool check rules`` would refuse, and what an on-call person needs on every
    alert: a name, a ``for:``, a severity routing understands, a summary and a description that
    use only labels the expression keeps."""
    doc = yaml.safe_load(ALERTS.read_text())
    assert set(doc) == {"groups"}
    names = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"]
        for rule in group["rules"]:
            assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule.get("alert")
            name = rule["alert"]
            names.append(name)
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", name)
            assert DURATION.match(rule["for"]), name
            assert rule["labels"]["severity"] in {"critical", "warning"}, name
            assert set(rule["annotations"]) == {"summary", "description"}, name
            _, grouping = promql(rule["expr"])
            for text in rule["annotations"].values():
                assert text.count("{{") == text.count("}}"), name
                for label in re.findall(r"\$labels\.(\w+)", text):
                    assert label in grouping or label in TARGET_LABELS or f"{label}=" in rule["expr"], (
                        name,
                        label,
                    )
    assert len(names) == len(set(names))
    # The cases the issue names, each at least once.
    for wanted in ("IntakeStopped", "ReplyLatencyOverBudget", "LanesGrowing", "LaneGrowing", "BindsDown",
                   "CircuitOpen", "DeadLetters"):  # fmt: skip
        assert any(wanted in n for n in names), wanted


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus)")
def test_promtool_accepts_the_rules() -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


# promtool's unit tests, as labelled data: the input series (one sample a minute), and per alert
# and evaluation time the alerts expected to fire (their labels; annotations are checked by
# `promtool check rules` and left out here, since promtool compares their rendered text).
J = 'job="parley", instance="a:8080"'
ALERT_CASES: list[dict[str, Any]] = [
    {"name": "texts stop after a steady hour", "series": {
        f'parley_inbound_total{{gateway="carrier", result="accepted", {J}}}': "0+10x90 900x40"},
     "expect": [("ParleyIntakeStopped", "95m", []), ("ParleyIntakeStopped", "110m", [{}])]},
    {"name": "no traffic at all is not an intake stop", "series": {
        f'parley_inbound_total{{gateway="carrier", result="accepted", {J}}}': "0x130"},
     "expect": [("ParleyIntakeStopped", "110m", [])]},
    {"name": "texts wait, no turn", "series": {
        f'parley_stream_lag{{shard="0", {J}}}': "0x10 5x30",
        f'parley_turns_total{{flow="nps", result="replied", {J}}}': "0+1x10 10x30"},
     "expect": [("ParleyTurnsStalled", "12m", []), ("ParleyTurnsStalled", "25m", [{}])]},
    {"name": "workers gone", "series": {f"parley_workers_live{{{J}}}": "2 2 0x10"},
     "expect": [("ParleyNoWorkers", "5m", [{}])]},
    {"name": "5% of turns over 20 ms", "series": {
        f'parley_turn_seconds_bucket{{le="0.01", {J}}}': "0+90x30",
        f'parley_turn_seconds_bucket{{le="0.02", {J}}}': "0+95x30",
        f'parley_turn_seconds_bucket{{le="0.025", {J}}}': "0+100x30",
        f'parley_turn_seconds_bucket{{le="+Inf", {J}}}': "0+100x30",
        f"parley_turn_seconds_count{{{J}}}": "0+100x30"},
     "expect": [("ParleyReplyLatencyOverBudget", "10m", []), ("ParleyReplyLatencyOverBudget", "20m", [{}]),
                ("ParleyReplyLatencyHigh", "20m", [])]},
    {"name": "every turn within 20 ms", "series": {
        f'parley_turn_seconds_bucket{{le="0.01", {J}}}': "0+90x30",
        f'parley_turn_seconds_bucket{{le="0.02", {J}}}': "0+100x30",
        f'parley_turn_seconds_bucket{{le="+Inf", {J}}}': "0+100x30",
        f"parley_turn_seconds_count{{{J}}}": "0+100x30"},
     "expect": [("ParleyReplyLatencyOverBudget", "20m", [])]},
    {"name": "5% of turns over half a second", "series": {
        f'parley_turn_seconds_bucket{{le="0.5", {J}}}': "0+95x30",
        f'parley_turn_seconds_bucket{{le="1", {J}}}': "0+100x30",
        f'parley_turn_seconds_bucket{{le="+Inf", {J}}}': "0+100x30",
        f"parley_turn_seconds_count{{{J}}}": "0+100x30"},
     "expect": [("ParleyReplyLatencyHigh", "3m", []), ("ParleyReplyLatencyHigh", "10m", [{}])]},
    {"name": "inbound lanes grow", "series": {f'parley_stream_lag{{shard="0", {J}}}': "0+100x60"},
     "expect": [("ParleyInboundLanesGrowing", "20m", []), ("ParleyInboundLanesGrowing", "35m", [{}])]},
    {"name": "a bulk lane grows", "series": {
        f'parley_outbound_backlog{{gateway="carrier", lane="bulk", {J}}}': "500+100x60"},
     "expect": [("ParleyOutboundLaneGrowing", "15m", []),
                ("ParleyOutboundLaneGrowing", "30m", [{"gateway": "carrier", "lane": "bulk"}])]},
    {"name": "replies wait over 10 s", "series": {
        f'parley_outbound_queue_seconds_bucket{{gateway="carrier", lane="reply", le="10", {J}}}': "0+90x30",
        f'parley_outbound_queue_seconds_bucket{{gateway="carrier", lane="reply", le="15", {J}}}': "0+100x30",
        f'parley_outbound_queue_seconds_bucket{{gateway="carrier", lane="reply", le="+Inf", {J}}}': "0+100x30"},
     "expect": [("ParleyReplyLaneSlow", "5m", []), ("ParleyReplyLaneSlow", "15m", [{"gateway": "carrier"}])]},
    {"name": "binds gone", "series": {f'parley_smpp_binds_up{{gateway="smsc", {J}}}': "2 2 0x10"},
     "expect": [("ParleySmppBindsDown", "3m", []), ("ParleySmppBindsDown", "6m", [{"gateway": "smsc"}])]},
    {"name": "half the binds gone", "series": {f'parley_smpp_binds_up{{gateway="smsc", {J}}}': "4x30 2x30"},
     "expect": [("ParleySmppBindsMissing", "35m", []), ("ParleySmppBindsMissing", "45m", [{"gateway": "smsc"}]),
                ("ParleySmppBindsDown", "45m", [])]},
    {"name": "circuit open", "series": {f'parley_circuit_open{{gateway="carrier", {J}}}': "0 0 1x10"},
     "expect": [("ParleyCircuitOpen", "3m", []), ("ParleyCircuitOpen", "6m", [{"gateway": "carrier"}])]},
    {"name": "an event dead-lettered", "series": {f"parley_dead_letters_total{{{J}}}": "0x5 1x20"},
     "expect": [("ParleyDeadLetters", "3m", []),
                ("ParleyDeadLetters", "6m", [{"job": "parley", "instance": "a:8080"}]),
                ("ParleyDeadLetters", "20m", [])]},
    {"name": "a webhook's first dead letter", "series": {
        f'parley_webhook_deliveries_total{{webhook="0", result="dead", {J}}}': "_x10 3x20"},
     "expect": [("ParleyWebhookDeadLetters", "12m", [{"webhook": "0"}]), ("ParleyWebhookDeadLetters", "25m", [])]},
    {"name": "outcome events lost", "series": {f'parley_webhook_events_lost_total{{webhook="0", {J}}}': "0x5 7x20"},
     "expect": [("ParleyWebhookEventsLost", "3m", []), ("ParleyWebhookEventsLost", "6m", [{"webhook": "0"}])]},
    {"name": "target down", "series": {f"up{{{J}}}": "1 1 0x5"},
     "expect": [("ParleyDown", "5m", [{"job": "parley", "instance": "a:8080"}])]},
]  # fmt: skip


def test_every_alert_has_a_case_where_it_fires() -> None:
    firing = {alert for case in ALERT_CASES for alert, _, exp in case["expect"] if exp}
    assert firing == {rule["alert"] for rule in alert_rules()}


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus)")
def test_promtool_unit_tests_of_the_rules(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    doc = yaml.safe_load(ALERTS.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(doc))
    severity = {rule["alert"]: rule["labels"]["severity"] for rule in alert_rules()}
    tests = [
        {"name": case["name"], "interval": "1m",
         "input_series": [{"series": s, "values": v} for s, v in case["series"].items()],
         "alert_rule_test": [
             {"eval_time": at, "alertname": alert,
              "exp_alerts": [{"exp_labels": {**labels, "severity": severity[alert]}} for labels in exp]}
             for alert, at, exp in case["expect"]
         ]}
        for case in ALERT_CASES
    ]  # fmt: skip
    unit = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "rules.test.yml").write_text(yaml.safe_dump(unit))
    done = subprocess.run(
        [PROMTOOL, "test", "rules", str(tmp_path / "rules.test.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
