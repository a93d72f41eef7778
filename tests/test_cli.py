"""The commands a newcomer runs first: ``parley demo``, ``parley chat`` piped, ``flows validate``."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from engine.core.errors import RedisUnavailable
from engine.core.redis_embedded import EmbeddedRedis
from tests.conftest import run_parley


def test_demo_prints_personalised_conversations_with_latencies() -> None:
    proc = run_parley("demo")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "embedded redis-server" in out
    assert "Hi Ann, thanks for choosing Acme Deliveries." in out
    assert "We're sorry to hear that, Raj. What went wrong?" in out
    assert "outcome completed; results: nps_score=9 (promoter)" in out
    assert "nps_score=4 (detractor)" in out
    assert "bound as transceiver (SMPP 3.4)" in out
    assert "delivery receipts: delivered, delivered, delivered\n" in out
    assert len(re.findall(r"\[reply +\d+\.\d ms\]", out)) == 5
    assert re.search(r"min \d+\.\d ms +median \d+\.\d ms +max \d+\.\d ms", out)
    assert "Traceback" not in proc.stderr


def test_chat_piped_reads_like_a_transcript(redis_url: str) -> None:
    proc = run_parley(
        "chat", "nps", "--contact", "07700 900123", "--field", "first_name=ann",
        env={"PARLEY_REDIS_URL": redis_url}, stdin="nine\nQuick and friendly\nignored after the end\n",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "< Hi Ann, thanks for choosing us. How likely are you to recommend us to a friend, from 0 "
        "(not at all) to 10 (extremely)?",
        "> nine",
        "< Wonderful, thank you! What do you like most about us?",
        "> Quick and friendly",
        "< Thank you Ann! Your 9/10 and your comments help us get better.",
        "-- conversation ended: completed; results: nps_score=9 reason='Quick and friendly'",
    ]


def test_chat_with_input_ending_mid_conversation_says_where_it_waits(redis_url: str) -> None:
    proc = run_parley(
        "chat", "nps", "--contact", "+447700900123", env={"PARLEY_REDIS_URL": redis_url}, stdin=""
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "-- still waiting at ask_score; results: none"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["chat", "nope", "--contact", "+447700900123"], "no flow 'nope'"),
        (["chat", "nps", "--contact", "12"], "--contact: '12' is not a phone number"),
        (
            ["chat", "nps", "--contact", "+447700900123", "--field", "oops"],
            "--field: expected KEY=VALUE",
        ),
    ],
)
def test_chat_refuses_bad_arguments_in_one_line(redis_url: str, args: list[str], message: str) -> None:
    proc = run_parley(*args, env={"PARLEY_REDIS_URL": redis_url})
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_flows_validate_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nstart: a\nnodes:\n  a:\n    say: hi\n    goto: nowhere\n")
    proc = run_parley("flows", "validate", str(bad), "rules")
    assert proc.returncode == 2
    assert f"{bad}:4: node 'a': goes to 'nowhere', which is not a node" in proc.stderr
    ok = run_parley("flows", "validate")
    shipped = len(list((Path(__file__).parent.parent / "rules").glob("*.yaml")))
    assert ok.returncode == 0 and ok.stdout.strip() == f"{shipped} flow(s) valid"


def test_run_refuses_to_start_with_an_invalid_flow(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "broken.yaml").write_text("name: broken\nstart: a\nnodes:\n  a: {say: '{{ oops', end: x}\n")
    proc = run_parley(
        "run",
        env={"PARLEY_ENGINE_FLOWS_DIR": str(tmp_path), "PARLEY_REDIS_URL": redis_url},
        timeout=30,
    )
    assert proc.returncode == 2
    assert (
        "invalid flows" in proc.stderr and "broken.yaml:4" in proc.stderr and "template syntax" in proc.stderr
    )


def test_run_serves_until_sigterm_then_stops_cleanly(redis_url: str) -> None:
    from engine.core.redis_embedded import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update(PARLEY_REDIS_URL=redis_url, PARLEY_HTTP_PORT=str(port), PARLEY_API_KEYS="k" * 20)
    exe = Path(os.sys.executable).parent / "parley"  # type: ignore[attr-defined]
    with subprocess.Popen([str(exe), "run"], env=env, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        while "listening" not in banner and proc.poll() is None:
            banner = proc.stderr.readline()
        assert f"listening on http://127.0.0.1:{port}" in banner
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200
        proc.terminate()
        assert proc.wait(timeout=15) == 0
        assert "stopping" in proc.stderr.read()


def test_embedded_redis_keeps_an_append_only_file(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, persistent=True)
    server.start()
    try:
        import redis

        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        client.close()
    finally:
        server.stop()
    assert any(p.name.startswith("appendonly") for p in tmp_path.rglob("*"))


def test_missing_redis_server_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RedisUnavailable, match=r"apt-get install redis-server.*redis\.url"):
        EmbeddedRedis(tmp_path).start()


def test_embedded_redis_dies_with_a_killed_parley(tmp_path: Path) -> None:
    import signal
    import time

    code = (
        "import sys, time; from engine.core.redis_embedded import EmbeddedRedis;"
        f"r = EmbeddedRedis({str(tmp_path)!r}); r.start(); print(r.proc.pid, flush=True); time.sleep(60)"
    )
    with subprocess.Popen(
        [os.sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent
    ) as parent:  # type: ignore[attr-defined]
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("redis-server outlived its parent")
