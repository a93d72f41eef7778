"""The embedded default Redis: a ``redis-server`` child process on a free loopback port.

Used when ``redis.url`` is not configured, so that ``parley run`` and ``parley demo`` work on a
machine with nothing set up. The child keeps its data and append-only file under one directory
and is stopped (SHUTDOWN, then SIGTERM, then SIGKILL) when the owner exits.

One directory, one server: the owner takes an exclusive ``flock`` on ``DIR/parley.lock`` (with
its pid written in it) before it starts redis-server and lets go only after the server stopped.
A second Parley pointed at the same directory is refused (``DataDirInUse``, naming that pid)
instead of starting a second redis-server on the live data and append-only file. The kernel
drops the lock when its holder dies, even by SIGKILL, so a crash leaves nothing to clean up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from engine.core.errors import DataDirInUse, RedisUnavailable

log = logging.getLogger(__name__)

#: The lock file in the data directory (holds the owner's pid).
LOCK_FILE = "parley.lock"

HOW_TO_GET_REDIS = (
    "no redis-server on PATH: install it (Debian/Ubuntu: apt-get install redis-server; "
    "macOS: brew install redis) or set redis.url / PARLEY_REDIS_URL to an existing Redis"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EmbeddedRedis:
    """Owns one redis-server child. ``async with EmbeddedRedis(dir) as r: r.url``."""

    def __init__(self, data_dir: str | Path, *, persistent: bool = True, port: int = 0) -> None:
        self.data_dir = Path(data_dir)
        self.persistent = persistent
        #: 0: pick a free port at each start; else always this one (a restart keeps the address).
        self.fixed_port = port
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> EmbeddedRedis:
        # Started on the calling (main) thread on purpose: Linux's parent-death signal follows
        # the thread that forked the child, and a pool thread may go away before Parley does.
        # It blocks start-up for a few tens of milliseconds, before anything else runs.
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    def start(self, timeout: float = 10.0) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RedisUnavailable(HOW_TO_GET_REDIS)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._spawn(exe, timeout)
        except BaseException:
            self._unlock()
            raise

    def _spawn(self, exe: str, timeout: float) -> None:
        self.port = self.fixed_port or free_port()
        args = [
            exe,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir.resolve()),
            "--daemonize", "no",
            "--save", "",
            "--logfile", "redis.log",
            "--protected-mode", "yes",
        ]  # fmt: skip
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
        self._wait_ready(timeout)
        log.info("embedded redis-server started port=%d dir=%s", self.port, self.data_dir)

    def _wait_ready(self, timeout: float) -> None:
        import time

        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read() if self.proc.stderr else b"").decode(errors="replace")
                tail = _log_tail(self.data_dir / "redis.log")
                raise RedisUnavailable(
                    f"embedded redis-server exited with code {self.proc.returncode}: "
                    f"{(err or tail).strip()[-300:]}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        self.stop()
        raise RedisUnavailable(f"embedded redis-server did not answer within {timeout:.0f}s")

    def _lock(self) -> None:
        """Take the data directory, or raise DataDirInUse naming the pid that holds it."""
        if self._lock_fd is not None:
            return
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise DataDirInUse(str(self.data_dir), int(owner) if owner.isdigit() else None) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        # The file stays: removing it would let a third process lock a fresh inode while a
        # second one still waits on the old. Closing the descriptor drops the flock.
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.ftruncate(fd, 0)
            os.close(fd)

    def stop(self) -> None:
        try:
            self._stop_server()
        finally:
            self._unlock()

    def _stop_server(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        # SHUTDOWN lets Redis flush its AOF; fall back to signals if it does not answer.
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=1) as s,
        ):
            s.sendall(b"SHUTDOWN\r\n")
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()
        log.info("embedded redis-server stopped port=%d", self.port)


def die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when Parley dies, even by SIGKILL,
    so no orphaned redis-server keeps holding the data directory."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _log_tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-300:]
    except OSError:
        return ""
