"""``make loadtest``: Parley under locust, headless, with everything it needs started here.

Starts a private redis-server and ``parley run`` (the ``http`` gateway pointed at the stub
provider inside the locust process), runs ``locust -f loadtests/locustfile.py --headless`` with
the given users and duration, prints locust's stats (``reply nps`` / ``reply appointment`` are the
latencies customers see) and stops everything.

    python loadtests/loadtest.py [--users 200] [--spawn-rate 50] [--duration 30s] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import API_KEY, ROOT, Engine

from engine.core.redis_embedded import EmbeddedRedis, free_port


def wait_healthy(url: str, engine: Engine, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if engine.proc is not None and engine.proc.poll() is not None:
            raise SystemExit(f"parley exited: {engine.log_tail()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"parley not healthy after {timeout:.0f}s: {engine.log_tail()}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--spawn-rate", type=float, default=50)
    p.add_argument("--duration", default="30s")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    handsets = free_port()
    with tempfile.TemporaryDirectory(prefix="parley-loadtest-") as tmp:
        redis = EmbeddedRedis(Path(tmp) / "redis", persistent=False)
        redis.start()
        engine = Engine(redis.url, handsets, args.workers, Path(tmp))
        try:
            engine.start()
            wait_healthy(engine.url, engine)
            env = {
                **os.environ,
                "PARLEY_LOADTEST_API_KEY": API_KEY,
                "PARLEY_LOADTEST_HANDSETS": f"127.0.0.1:{handsets}",
            }
            cmd = [
                sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests/locustfile.py"), "--headless",
                "--users", str(args.users), "--spawn-rate", str(args.spawn_rate), "--run-time", args.duration,
                "--host", engine.url, "--only-summary", "--stop-timeout", "12",
            ]  # fmt: skip
            return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode
        finally:
            engine.stop()
            redis.stop()


if __name__ == "__main__":
    sys.exit(main())
