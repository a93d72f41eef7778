"""Two ``parley run`` with one embedded data directory: the second refuses in one line naming
the owner, before it starts a redis-server on the live one's data and append-only file."""

from __future__ import annotations

import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

from engine.core.errors import ConfigError
from engine.core.redis_embedded import EmbeddedRedis, free_port
from tests.conftest import run_parley


def _redis_servers_on(data_dir: Path) -> list[int]:
    """The pids of redis-server processes working in ``data_dir`` (Redis rewrites its command
    line but chdirs into its --dir, so /proc/PID/cwd tells)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and (entry / "comm").read_text().strip() == "redis-server"
                and Path(os.readlink(entry / "cwd")) == data_dir.resolve()
            ):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _env(data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update(PARLEY_REDIS_EMBEDDED_DIR=str(data_dir), PARLEY_HTTP_PORT=str(port), PARLEY_API_KEYS="k" * 20)
    return env


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads processes from /proc")
def test_a_second_instance_on_the_same_data_dir_says_who_owns_it_and_exits_2(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "redis", free_port()
    exe = Path(os.sys.executable).parent / "parley"  # type: ignore[attr-defined]
    with subprocess.Popen(
        [str(exe), "run"], env=_env(data_dir, port), stderr=subprocess.PIPE, text=True
    ) as first:
        assert first.stderr is not None
        banner = first.stderr.readline()
        while "listening" not in banner and first.poll() is None:
            banner = first.stderr.readline()
        assert "listening" in banner
        try:
            (owner,) = _redis_servers_on(data_dir)
            second = run_parley("run", env=_env(data_dir, port), timeout=30)
            assert second.returncode == 2
            assert second.stderr.count("\n") == 1, second.stderr
            assert f"pid {first.pid}" in second.stderr and str(data_dir) in second.stderr
            assert "Traceback" not in second.stderr
            # No second redis-server was started on the live data, and the first still serves.
            assert _redis_servers_on(data_dir) == [owner]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                assert resp.status == 200
        finally:
            first.terminate()
            assert first.wait(timeout=15) == 0
    # Once the owner stopped, the directory is free again.
    again = EmbeddedRedis(data_dir, persistent=True)
    again.start()
    again.stop()


def test_the_lock_is_held_for_the_servers_life_and_released_after(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path, persistent=True)
    first.start()
    try:
        with pytest.raises(
            ConfigError, match=rf"redis.embedded_dir: {tmp_path} is in use by pid {os.getpid()}"
        ):
            EmbeddedRedis(tmp_path, persistent=True).start()
    finally:
        first.stop()
    second = EmbeddedRedis(tmp_path, persistent=True)
    second.start()
    second.stop()


def test_a_port_in_use_is_one_line_not_a_traceback(tmp_path: Path, redis_url: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_parley(
            "run", env={"PARLEY_REDIS_URL": redis_url, "PARLEY_HTTP_PORT": str(port)}, timeout=30
        )
    assert proc.returncode == 2
    assert f"http.port: 127.0.0.1:{port} is in use" in proc.stderr and "Traceback" not in proc.stderr
