"""The SMPP benchmark runs at a tiny scale and writes the figures it promises.
(It asserts what was counted and the rate guarantee, never how fast: times belong to the report.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from tests.conftest import ROOT


def test_bench_smpp_measures_the_matrix_and_the_rate(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable, "loadtests/bench_smpp.py", "--messages", "300", "--binds", "1,2",
            "--windows", "1,10", "--rate", "100", "--rate-messages", "300", "--out", str(tmp_path),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = orjson.loads((tmp_path / "smpp-latest.json").read_bytes())
    assert result["machine"]["cores"] and "share" in result["machine"]["note"]
    rows = result["throughput"]
    assert [(r["binds"], r["window"]) for r in rows] == [(1, 1), (1, 10), (2, 1), (2, 10)]
    for row in rows:
        assert not row["errors"]
        assert sum(b["submits"] for b in row["per_bind"].values()) == 300
        assert row["msgs_per_s"] > 0 and row["msgs_per_s_per_bind"] > 0
        assert row["submit_resp_ms"]["n"] == 300 and "p99" in row["submit_resp_ms"]
        assert row["receipts_drained"]
    rate = result["rates"][0]
    assert rate["received"] == 300
    # Never above the configured rate, but for one: the simulated SMSC stamps a submit when its
    # event loop reads it, and on a loaded machine one read late shares a window with the next
    # second's (Parley's own send log is held to the rate exactly: tests/test_rate.py).
    assert rate["max_in_any_1s_window"] <= 101
    assert rate["mean_per_s"] > 0
    assert rate["min_in_any_full_1s_window_after_first"] is not None
    assert "SMPP submits/s" in proc.stdout and "Rate on the wire" in proc.stdout
