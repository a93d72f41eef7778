"""The send-pipeline benchmark runs at a tiny scale and writes the figures it promises.
(It asserts what was counted and the rate guarantee, never how fast: times belong to the report.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from tests.conftest import ROOT


def test_bench_gateways_measures_both_phases_and_the_rate(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable, "loadtests/bench_gateways.py", "--backlog", "600", "--rate", "100",
            "--reply-rate", "5", "--seconds", "2", "--out", str(tmp_path),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = orjson.loads((tmp_path / "gateways-latest.json").read_bytes())
    assert result["reply_latency_ms_idle"]["n"] == 10
    assert result["reply_latency_ms_with_backlog"]["n"] == 10
    # Never above the configured rate, but for one: the stub provider stamps a send when its
    # event loop reads it, and on a loaded machine one read late shares a window with the next
    # second's (Parley's own send log is held to the rate exactly: tests/test_rate.py).
    assert result["rate"]["max_in_any_1s_window"] <= 101
    assert result["backlog_left_at_end"] > 0  # the replies were measured while bulk was waiting
    assert "Reply lane latency" in proc.stdout
