"""``parley run --workers N``: N worker processes beside the HTTP/gateway process, kept running.

Each worker is ``parley worker --index I`` with the same configuration (same ``--config``, same
environment) and the parent's Redis URL (the embedded one too). Workers share the inbound shards
through leases (:mod:`engine.shards`), so one that dies loses nothing: its shards and
unacknowledged texts are taken over by the others within ``engine.lease_ttl``, and the
supervisor starts a replacement (after 1 s, doubling up to 30 s while it keeps failing at
start-up). Workers get SIGTERM if the parent dies, even by SIGKILL (Linux).

Stopping sends SIGTERM to every worker (each finishes its batch in hand and releases its
shards) and waits up to ``engine.shutdown_timeout`` plus 5 s before SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time

from engine.metrics import MULTIPROC_ENV
from engine.redis_embedded import die_with_parent

log = logging.getLogger(__name__)

RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0
#: A worker that ran at least this long before dying is restarted without growing back-off.
HEALTHY_RUN_S = 60.0


class Supervisor:
    """``async with Supervisor(n, redis_url, config_path, timeout):`` runs ``n`` workers."""

    def __init__(self, n: int, redis_url: str, config_path: str | None, shutdown_timeout: float) -> None:
        self.n = n
        self.redis_url = redis_url
        self.config_path = config_path
        self.shutdown_timeout = shutdown_timeout
        #: index -> the running process (for /healthz and tests)
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        #: How many times each worker was restarted after dying.
        self.restarts: dict[int, int] = dict.fromkeys(range(n), 0)
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def argv(self, index: int) -> list[str]:
        config = ["--config", self.config_path] if self.config_path else []
        return [sys.executable, "-m", "engine.cli", *config, "worker", "--index", str(index)]

    async def __aenter__(self) -> Supervisor:
        self._tasks = [
            asyncio.create_task(self._keep(i), name=f"parley-supervise-w{i}") for i in range(self.n)
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping.set()
        for proc in list(self.procs.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = self.shutdown_timeout + 5
        for i, proc in list(self.procs.items()):
            try:
                await asyncio.wait_for(proc.wait(), deadline)
            except TimeoutError:
                log.error("worker %d (pid %d) did not stop within %.0fs; killing it", i, proc.pid, deadline)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep(self, index: int) -> None:
        backoff = RESTART_MIN_S
        env = {**os.environ, "PARLEY_REDIS_URL": self.redis_url}
        while not self._stopping.is_set():
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *self.argv(index), env=env, preexec_fn=die_with_parent if sys.platform == "linux" else None
            )
            self.procs[index] = proc
            log.info("worker %d started pid=%d", index, proc.pid)
            rc = await proc.wait()
            _forget_gauges(proc.pid)
            if self._stopping.is_set():
                return
            if time.monotonic() - started >= HEALTHY_RUN_S:
                backoff = RESTART_MIN_S
            self.restarts[index] += 1
            log.error(
                "worker %d (pid %d) exited with %s; starting a new one in %.0fs",
                index, proc.pid, _describe(rc), backoff,
            )  # fmt: skip
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_MAX_S)


def _forget_gauges(pid: int) -> None:
    """A dead worker's in-flight gauge must not count any more (per-process metric files)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _describe(rc: int) -> str:
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-rc).name}"
    return f"status {rc}"
