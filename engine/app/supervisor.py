"""``parley run --workers N`` and ``--api-processes N``: child processes beside the main one,
kept running.

Two kinds (``role``): worker processes (``parley worker --index I``, below) and extra API
processes (``parley api --index I``). API processes share the main process's HTTP port
(SO_REUSEPORT: the kernel spreads new connections over every process listening on it), so the
main process listens first and hands them the port it got (``PARLEY_HTTP_PORT``); they hold no
leases, so nothing is released when one dies, and the port keeps answering from the others
meanwhile. Everything below about readiness, restarts and stopping holds for both; the lease
release is the workers' alone.

Each worker is ``parley worker --index I`` with the same configuration (same ``--config``, same
environment) and the parent's Redis URL (the embedded one too). Workers share the inbound shards
through leases (:mod:`engine.shards`), so one that dies loses nothing: its unacknowledged texts
are claimed by whichever worker takes its shards. Workers get SIGTERM if the parent dies, even
by SIGKILL (Linux).

Ready, then dead, versus dead before ready. A worker reports that it is *ready* (its runtime is
open: configuration and flows read, Redis answered, first shard lease taken) by writing one line,
``ready <worker id>``, to a pipe the supervisor hands it (the file descriptor in
``PARLEY_READY_FD``). A pipe, rather than a heartbeat in Redis or a file, because the supervisor
learns it the moment it happens, from that very process (no polling, no stale entry of an earlier
process with the same pid, no file to clean up), and a Redis outage cannot make a healthy start
look like a failed one. Then, when a worker dies:

- killed by a signal after it was ready (the out-of-memory killer, a SIGKILL, a segfault in a
  turn): it starts fine, so it is started again at once (``RESTART_READY_S``) however often that
  happens. The start itself (a second or more of CPU) bounds how fast such a loop can go.
- died before it was ready (a configuration only the worker reads, an import error, Redis
  unreachable at start, a kill during start-up), or exited with an error status even after it
  was ready (Parley itself gave up): the wait doubles from ``RESTART_MIN_S`` up to
  ``RESTART_MAX_S`` while that goes on, so a worker that cannot run is not restarted in a hot
  loop. A signal after readiness ends the run of failures.

Either way, once a worker that had been ready is dead the supervisor *knows* it is gone (it
reaped it), so it releases its shard leases at once (``lease.lua`` ``leave`` in the dead
worker's name) instead of letting them run out; ``lease.lua`` tells the other workers
(``p:{l}:changed:worker``), which take the shards within milliseconds, and the replacement gets its
share back when it joins. Shards go unread only while no worker at all is running: then for
the replacement's start-up time. Workers on other hosts, which no supervisor watches, are
taken over when their leases run out (``engine.lease_ttl``).

A commit the dead worker had sent just before it died and that Redis runs after the shards were
released is harmless: the commit script's compare-and-swap and last-applied check (see
:mod:`engine.shards`) make the later writer decide again or commit nothing.

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
from collections.abc import Awaitable, Callable
from typing import BinaryIO

from engine.core.config import READY_FD_ENV
from engine.core.metrics import MULTIPROC_ENV
from engine.core.redis_embedded import die_with_parent

log = logging.getLogger(__name__)

#: The wait before restarting a worker killed by a signal after it was ready: none.
RESTART_READY_S = 0.0
#: The waits before restarting a worker that failed (died before it was ready, or exited with
#: an error status): doubling while failures go on, up to the max.
RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0

#: Called with a dead worker's id (as it reported it when ready): release its shard leases.
ReleaseLeases = Callable[[str], Awaitable[None]]


class Supervisor:
    """``async with Supervisor(n, redis_url, config_path, timeout, release):`` runs ``n`` workers;
    ``role="api"`` runs ``n`` API processes instead, numbered from ``first``, with ``env`` added to
    their environment (the shared port); ``extra`` is added to each one's arguments."""

    def __init__(
        self, n: int, redis_url: str, config_path: str | None, shutdown_timeout: float,
        release: ReleaseLeases | None = None, *, role: str = "worker", first: int = 0,
        env: dict[str, str] | None = None, extra: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        self.n = n
        self.redis_url = redis_url
        self.config_path = config_path
        self.shutdown_timeout = shutdown_timeout
        self.release = release
        self.role = role
        self.env = env or {}
        #: Arguments added to each process's command line (``--senders``).
        self.extra = extra
        self.indices = range(first, first + n)
        #: index -> the running process (for /healthz and tests)
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        #: index -> whether that process has reported ready
        self.ready: dict[int, bool] = dict.fromkeys(self.indices, False)
        #: How many times each process was restarted after dying.
        self.restarts: dict[int, int] = dict.fromkeys(self.indices, 0)
        #: index -> the wait before its latest (or next) start, in seconds (0 for the first)
        self.waits: dict[int, float] = dict.fromkeys(self.indices, 0.0)
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def argv(self, index: int) -> list[str]:
        config = ["--config", self.config_path] if self.config_path else []
        args = [self.role, "--index", str(index), *self.extra]
        return [sys.executable, "-m", "engine.app.cli", *config, *args]

    def report(self) -> dict[str, dict[str, object]]:
        """What /healthz shows of each process: pid, running, ready, restarts, restart_wait."""
        return {
            str(i): {
                "pid": p.pid,
                "running": p.returncode is None,
                "ready": self.ready[i],
                "restarts": self.restarts[i],
                "restart_wait": self.waits[i],
            }
            for i, p in sorted(self.procs.items())
        }

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every process that is running and ready (SIGHUP: reload the flows; one
        still starting has no handler yet, and reads the new files anyway)."""
        for i, proc in self.procs.items():
            if self.ready[i] and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def __aenter__(self) -> Supervisor:
        self._tasks = [
            asyncio.create_task(self._keep(i), name=f"parley-supervise-{self.role}{i}") for i in self.indices
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
                log.error(
                    "%s %d (pid %d) did not stop within %.0fs; killing it", self.role, i, proc.pid, deadline
                )
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep(self, index: int) -> None:
        failures = 0  # failures in a row (see the module docstring)
        env = {**os.environ, "PARLEY_REDIS_URL": self.redis_url, **self.env}
        while not self._stopping.is_set():
            proc, ready = await self._start(index, env)
            try:
                rc = await proc.wait()
                me = await ready  # the pipe is at its end once the process is gone
            finally:
                ready.cancel()
            self.ready[index] = False
            _forget_gauges(proc.pid)
            if self._stopping.is_set():
                return
            if me:
                await self._release(me)
            if me and rc <= 0:  # a signal (or someone else's SIGTERM) after it was ready
                failures = 0
                wait = RESTART_READY_S
            else:
                failures += 1
                wait = min(RESTART_MAX_S, RESTART_MIN_S * 2 ** (failures - 1))
            self.restarts[index] += 1
            self.waits[index] = wait
            log.error(
                "%s %d (pid %d) exited with %s %s; starting a new one in %gs",
                self.role, index, proc.pid, _describe(rc),
                "after it was ready" if me else "before it was ready", wait,
            )  # fmt: skip
            if wait:
                await asyncio.sleep(wait)

    async def _start(
        self, index: int, env: dict[str, str]
    ) -> tuple[asyncio.subprocess.Process, asyncio.Task[str]]:
        """Start worker ``index`` with the write end of a fresh readiness pipe; returns the
        process and a task that ends with its id once it is ready, or "" if it died first."""
        r, w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv(index), env={**env, READY_FD_ENV: str(w)}, pass_fds=(w,),
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )  # fmt: skip
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)  # the child holds the only write end: the pipe ends when the child does
        self.procs[index] = proc
        self.ready[index] = False
        log.info("%s %d started pid=%d", self.role, index, proc.pid)
        pipe = os.fdopen(r, "rb", buffering=0)
        task = asyncio.create_task(self._await_ready(index, pipe), name=f"parley-ready-{self.role}{index}")
        return proc, task

    async def _await_ready(self, index: int, pipe: BinaryIO) -> str:
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        except BaseException:
            pipe.close()
            raise
        try:
            line = await reader.readline()
        finally:
            transport.close()
        word, _, me = line.decode(errors="replace").strip().partition(" ")
        if word != "ready" or not me:
            return ""
        self.ready[index] = True
        log.info("%s %d ready as %s", self.role, index, me)
        return me

    async def _release(self, me: str) -> None:
        """Free a dead worker's shards now rather than when its leases run out."""
        if self.release is None:
            return
        try:
            await self.release(me)
        except Exception as exc:  # Redis away: the leases run out by themselves
            log.warning("could not release the shards of dead worker %s (%s); they expire", me, exc)


def report_ready(worker_id: str) -> None:
    """In a worker started by a supervisor: say it is ready (see the module docstring). A worker
    started by hand has no pipe and says nothing."""
    fd = os.environ.pop(READY_FD_ENV, "")
    if not fd.isdigit():
        return
    try:
        os.write(int(fd), f"ready {worker_id}\n".encode())
    except OSError as exc:  # the supervisor is gone; this worker gets SIGTERM soon
        log.warning("could not tell the supervisor this worker is ready (%s)", exc)
    finally:
        with contextlib.suppress(OSError):
            os.close(int(fd))


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
