"""Real redis-server processes for the replication tests: a primary, its replicas, sentinels,
each on a free loopback port in a temporary directory, stopped at the end (SIGKILL on demand:
a crash, not a shutdown)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from engine.core.redis_embedded import die_with_parent, free_port


def need_redis_server() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not found (apt-get install redis-server)")
    return exe


class Node:
    """One redis-server (or sentinel) child. ``Node(dir, "--replicaof", "127.0.0.1", "6379")``."""

    def __init__(self, base: Path, *args: str, sentinel_conf: str = "", port: int = 0) -> None:
        self.port = port or free_port()
        self.dir = base / str(self.port)
        self.dir.mkdir(parents=True)
        self.args = list(args)
        self.sentinel_conf = sentinel_conf
        self.proc: subprocess.Popen[bytes] | None = None
        self._clients: list[redis.Redis] = []
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        """A client of this node, closed when the node is killed."""
        c = redis.Redis(port=self.port, socket_timeout=5)
        self._clients.append(c)
        return c

    def start(self) -> None:
        exe = need_redis_server()
        head = [exe]
        if self.sentinel_conf:
            conf = self.dir / "sentinel.conf"
            conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n{self.sentinel_conf}")
            head = [exe, str(conf), "--sentinel"]
        else:
            head += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", ""]
            head += ["--appendonly", "no", "--repl-diskless-sync-delay", "0", *self.args]
        with (self.dir / "log").open("wb") as log:
            self.proc = subprocess.Popen(
                head, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as c:
                    if c.ping():
                        return
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError(
            f"redis-server on {self.port} did not start: {(self.dir / 'log').read_text()[-500:]}"
        )

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash (no SHUTDOWN, nothing flushed)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process dies only once resumed
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        for c in self._clients:
            c.close()
        self._clients.clear()


def tag_on(master: Node) -> str:
    """A hash tag whose slot the given cluster master owns."""
    from redis.crc import key_slot

    slots = master.client().cluster("slots")  # [[first, last, [host, port, id], replicas...], ...]
    mine = [(int(r[0]), int(r[1])) for r in slots if int(r[2][1]) == master.port]
    for i in range(100_000):
        if any(a <= key_slot(f"s{i}".encode()) <= b for a, b in mine):
            return f"s{i}"
    raise AssertionError(f"no slot of {master.port} found in {slots}")


def wait_replicated(primary: Node, *replicas: Node, timeout: float = 10, probe: str = "test:probe") -> None:
    """Until every replica streams from the primary: a write there is confirmed by all of them
    (WAIT). "online" with a matching offset is not enough: just after a diskless full sync a
    replica is online at offset 0 before the primary streams to it."""
    c = primary.client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c.incr(probe)
        if c.wait(len(replicas), 200) >= len(replicas):
            c.delete(probe)
            if c.wait(len(replicas), 1000) >= len(replicas):
                return
    raise AssertionError(f"replicas not in sync after {timeout}s: {c.info('replication')}")


CLUSTER_ARGS = (
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "5000",
)


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    while True:
        port = free_port()
        if port < 55535:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                    return port
                except OSError:
                    continue


def start_cluster(base: Path, masters: int = 3) -> list[Node]:
    """A Redis Cluster of ``masters`` masters with one replica each (``redis-cli --cluster
    create``), every replica streaming from its master; masters first, then their replicas in
    the same order."""
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli not found (apt-get install redis-tools)")
    nodes = [Node(base, *CLUSTER_ARGS, port=_cluster_port()) for _ in range(2 * masters)]
    try:
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(n.addr for n in nodes), "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            infos = [n.client().cluster("info") for n in nodes]
            if all(i["cluster_state"] == "ok" for i in infos):
                break
            time.sleep(0.05)
        by_port = {n.port: n for n in nodes}
        ordered_masters, ordered_replicas = [], []
        for n in nodes:
            info = n.client().info("replication")
            if info["role"] == "master":
                replicas = [by_port[int(v["port"])] for k, v in info.items() if k.startswith("slave")]
                deadline = time.monotonic() + 30
                while not replicas and time.monotonic() < deadline:
                    time.sleep(0.05)
                    info = n.client().info("replication")
                    replicas = [by_port[int(v["port"])] for k, v in info.items() if k.startswith("slave")]
                wait_replicated(n, *replicas, probe=f"test:{{{tag_on(n)}}}")
                ordered_masters.append(n)
                ordered_replicas.append(replicas[0])
        return ordered_masters + ordered_replicas
    except BaseException:
        for n in nodes:
            n.kill()
        raise
