"""The OpenAPI description against the server it describes: schemathesis generates requests
from ``/v1/openapi.json`` (schema-valid and schema-violating ones) and sends them to a real
``parley run``, bounded and deterministic. Whatever the description allows must be accepted,
whatever it forbids refused, no answer may be a 5xx or differ from its description. The
exceptions, each with its reason, are in tests/schemathesis.toml."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engine.core.redis_embedded import free_port
from tests.conftest import ROOT

KEY = "schemathesis-key-0123456789"


@pytest.mark.timeout(180)  # about 20 s alone; generous for a loaded CI machine
def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "parley.yaml"
    config.write_text(
        f"http: {{port: {port}}}\napi: {{keys: [{KEY}]}}\nredis: {{embedded_dir: {tmp_path / 'redis'}}}\n"
        f"engine: {{flows_dir: {ROOT / 'rules'}}}\n"
        "gateways: {provider: {type: http, url: 'http://127.0.0.1:9/send', sender: '12345'}}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update(PARLEY_CONFIG=str(config), PYTHONPATH=str(ROOT))
    bin_dir = Path(sys.executable).parent
    with subprocess.Popen(
        [str(bin_dir / "parley"), "run"], env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    ) as engine:
        assert engine.stderr is not None
        line = engine.stderr.readline()
        while "listening" not in line and engine.poll() is None:
            line = engine.stderr.readline()
        assert "listening" in line, line
        # Keep reading its log, so a chatty engine (sends failing against the unreachable
        # provider) never blocks on a full pipe and can stop when told.
        log: list[str] = []
        threading.Thread(target=lambda: log.extend(engine.stderr or ()), daemon=True).start()
        try:
            run = subprocess.run(
                [
                    str(bin_dir / "schemathesis"),
                    "--config-file",
                    str(ROOT / "tests" / "schemathesis.toml"),
                    "run",
                    f"http://127.0.0.1:{port}/v1/openapi.json",
                    "--header",
                    f"Authorization: Bearer {KEY}",
                    "--max-examples",
                    "10",
                    "--seed",
                    "1",
                    "--generation-deterministic",
                ],
                env={**env, "NO_COLOR": "1"},
                cwd=tmp_path,  # its cache (.schemathesis/) goes there, not in the tree
                capture_output=True,
                text=True,
                timeout=150,
            )
        finally:
            engine.terminate()
            engine.wait(timeout=15)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
