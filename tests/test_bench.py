"""The benchmark harness runs end to end at a tiny scale and writes what other tools read.
(It asserts what was counted, never how fast: times belong to the benchmark's report.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import ROOT


def test_bench_answers_every_text_once_and_writes_its_results(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable, "loadtests/bench.py", "--conversations", "60", "--rates", "40,80",
            "--seconds", "1", "--bookkeeping", "500", "--out", str(tmp_path),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = orjson.loads((tmp_path / "latest.json").read_bytes())
    for key in (
        "max_sustained_turns_per_s", "p99_ms_at_1000", "bytes_per_conversation",
        "baseline_evalsha_pipelined_per_s", "bytes_per_message_steady",
    ):  # fmt: skip
        assert key in result, key
    assert result["partial"] is False
    assert [s["offered"] for s in result["steps"]] == [40, 80]
    assert all(s["answered"] == s["offered"] and s["refused"] == 0 for s in result["steps"])
    # Where the CPU and the Redis work went, per answered text (the capacity model's inputs).
    for s in result["steps"]:
        assert {"harness", "redis", "total"} <= set(s["cpu_us_per_turn"]), s["cpu_us_per_turn"]
        assert s["cpu_us_per_turn"]["total"] > 0
        assert s["redis_per_turn"]["commands"]["evalsha"] >= 2  # intake and commit at least
        assert s["redis_per_turn"]["bytes_in"] > 0
    assert result["unmatched_replies"] == 0  # nothing was sent twice
    assert result["p99_ms_at_1000"] is None  # no step at 1,000/s was run
    assert result["bytes_per_conversation"] > 0 and result["baseline_evalsha_pipelined_per_s"] > 0
    assert result["bytes_per_message_steady"] > 0 and result["bookkeeping"]["messages"] == 500
    assert set(result["breakdown_bytes"]) >= {"session", "timers", "contact", "message_records"}
    assert (tmp_path / "latest.png").read_bytes()[:4] == b"\x89PNG"
    assert "max sustained" in proc.stdout
    # Says why there is no figure at 1,000/s instead of printing "None ms".
    assert "None ms" not in proc.stdout
    assert "p99 at 1000/s: not measured (1000/s was not among the rates run: 40, 80)" in proc.stdout
    assert result["p99_ms_at_1000_missing"] == "1000/s was not among the rates run: 40, 80"


def _step(rate: int, *, sustained: bool) -> Any:
    from loadtests.bench import Step

    step = Step(rate, 1.0, offered=rate, answered=rate if sustained else rate // 2, achieved_rate=rate)
    for ms in (3, 5, 8):
        step.hist.record_value(ms * 1000)
    return step


def test_the_chart_marks_which_rates_were_sustained() -> None:
    from loadtests.bench import chart

    steps = [_step(250, sustained=True), _step(500, sustained=True), _step(1000, sustained=False)]
    fig = chart(steps, "t")
    ax = fig.axes[0]
    marks = {round(t.get_position()[0]): t.get_text() for t in ax.texts}
    assert marks == {250: "sustained", 500: "sustained", 1000: "not sustained"}
    labels = ax.get_legend_handles_labels()[1]
    assert "not sustained" in " ".join(labels)


def test_bench_on_a_cluster_reports_the_same_figures_summed_over_its_masters(tmp_path: Path) -> None:
    """``make bench BENCH_ARGS=--cluster``: the same run on a private 3-master Redis Cluster, with
    the keys tools read, the mode said, and Redis's figures (CPU, commands, memory, baseline)
    taken over every master."""
    proc = subprocess.run(
        [
            sys.executable, "loadtests/bench.py", "--cluster", "--conversations", "30", "--rates", "40",
            "--seconds", "1", "--bookkeeping", "200", "--baseline-seconds", "0.2", "--out", str(tmp_path),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = orjson.loads((tmp_path / "latest.json").read_bytes())
    assert result["redis_mode"] == result["parameters"]["redis_mode"] == "cluster"
    assert result["parameters"]["redis_masters"] == 3
    for key in (
        "max_sustained_turns_per_s", "p99_ms_at_1000", "bytes_per_conversation",
        "baseline_evalsha_pipelined_per_s", "bytes_per_message_steady",
    ):  # fmt: skip
        assert key in result, key
    assert result["partial"] is False and result["unmatched_replies"] == 0
    (step,) = result["steps"]
    assert step["answered"] == step["offered"] == 40 and step["refused"] == 0
    assert step["cpu_us_per_turn"]["redis"] > 0 and step["cpu_us_per_turn"]["total"] > 0
    assert step["redis_per_turn"]["commands"]["evalsha"] >= 2  # summed over the masters
    per_node = result["baseline_evalsha_pipelined_per_node"]
    assert len(per_node) == 3 and all(n > 0 for n in per_node)
    assert result["baseline_evalsha_pipelined_per_s"] == sum(per_node)
    assert result["bytes_per_conversation"] > 0 and result["breakdown_bytes"]["session"] > 0
    assert result["used_memory_bytes"] > 0 and result["bytes_per_message_steady"] > 0
    assert "redis cluster" in proc.stdout and "per master" in proc.stdout
