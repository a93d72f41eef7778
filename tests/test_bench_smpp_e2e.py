"""The end-to-end SMPP benchmark (``bench_smpp.py --e2e``) runs at a tiny scale: the SMSC in its
own process texts a real ``parley run`` and every text's reply comes back as a submit_sm, with
make bench's JSON keys. (It asserts what was counted, never how fast.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from tests.conftest import ROOT


def test_bench_smpp_e2e_answers_every_text_and_writes_make_bench_keys(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable, "loadtests/bench_smpp.py", "--e2e", "--rates", "20", "--seconds", "1",
            "--handsets", "10", "--workers", "1", "--out", str(tmp_path),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = orjson.loads((tmp_path / "smpp-e2e-latest.json").read_bytes())
    assert not result["partial"] and "share" in result["machine"]["note"]
    (step,) = result["steps"]
    assert step["offered_rate"] == 20 and step["offered"] == 20
    assert step["answered"] == 20 and step["refused"] == 0 and step["sustained"]
    assert {"p50", "p95", "p99", "max"} <= set(step["latency_ms"]) and step["latency_ms"]["p50"] > 0
    assert result["max_sustained_turns_per_s"] == 20 and result["unmatched_replies"] == 0
    assert result["parameters"]["connector_rate_per_s"] >= 10 * 20  # the carrier's TPS is not the limit
    warm = result["parameters"]["warm_up"]  # a step before the rates, answered, not recorded
    assert result["smsc"]["submits"] == 20 + warm["rate"] * warm["seconds"] and not warm["recorded"]
    assert result["smsc_binds_seen"] == result["parameters"]["binds"]
    assert (tmp_path / "smpp-e2e-latest.png").stat().st_size > 0
    assert "deliver_sm -> reply submit_sm" in proc.stdout
