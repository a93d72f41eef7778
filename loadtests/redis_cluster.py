"""A real Redis Cluster on loopback: 3 masters and 3 replicas (or any numbers), each a private
``redis-server --cluster-enabled yes`` (no persistence) in a temporary directory, joined with
``redis-cli --cluster create --cluster-replicas N``. Bounded: ``start`` gives up after ``timeout``
seconds. The tests start one (tests/conftest.py, tests/test_cluster*.py) and so does ``make bench
BENCH_ARGS=--cluster`` (3 masters, no replicas): each node dies with the process that started it.

``cluster-node-timeout`` is short (1 s) so that a killed master's replica is promoted within
about two seconds (the failover test)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from engine.core.redis_embedded import die_with_parent, free_port

NODE_TIMEOUT_MS = 1000


@dataclass
class Node:
    port: int
    bus_port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)


class LocalCluster:
    """``with LocalCluster(tmp) as c: c.url``; ``c.kill(node)`` kills a node with SIGKILL."""

    def __init__(self, root: Path, masters: int = 3, replicas: int = 1, *, orphan_safe: bool = False) -> None:
        """``orphan_safe``: each node gets SIGTERM when the thread that started it dies (even by
        SIGKILL); start it from the main thread then (the benchmark does)."""
        self.root = Path(root)
        self.orphan_safe = orphan_safe
        self.nodes: list[Node] = []
        self.masters = masters
        self.replicas = replicas
        self._used: set[int] = set()

    @property
    def url(self) -> str:
        return f"redis://{self.nodes[0].addr}"

    def _port(self) -> int:
        while True:
            port = free_port()
            if port not in self._used:
                self._used.add(port)
                return port

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 20.0) -> None:
        exe = shutil.which("redis-server")
        if exe is None or shutil.which("redis-cli") is None:
            raise RuntimeError("redis-server and redis-cli are needed for the cluster tests")
        for _ in range(self.masters * (1 + self.replicas)):
            port = self._port()
            node = Node(port, self._port(), self.root / str(port))
            node.dir.mkdir(parents=True)
            self.nodes.append(node)
            self._spawn(node)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            self._wait(lambda n=node: n.client().ping(), deadline, f"node {node.addr} did not start")
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(n.addr for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=max(1.0, deadline - time.monotonic()),
        )  # fmt: skip
        self.wait_ok(deadline)

    def _spawn(self, node: Node) -> None:
        node.proc = subprocess.Popen(
            ["redis-server", "--port", str(node.port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-port", str(node.bus_port), "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             "--dir", str(node.dir), "--save", "", "--appendonly", "no",
             # Replicas sync at once (not after the default 5 s wait for more replicas): a replica
             # that never synced cannot be promoted.
             "--repl-diskless-sync-delay", "0",
             "--loglevel", "warning", "--logfile", str(node.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent if self.orphan_safe and sys.platform == "linux" else None,
        )  # fmt: skip

    @staticmethod
    def _wait(probe: object, deadline: float, what: str) -> None:
        while True:
            with contextlib.suppress(redis.RedisError, OSError):
                if probe():  # type: ignore[operator]
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"local cluster: {what}")
            time.sleep(0.05)

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def wait_ok(self, deadline: float) -> None:
        """Until every live node says cluster_state:ok and sees every slot served by a live
        master, and every replica has synced with its master (so it can be promoted)."""
        alive = {n.port for n in self.live()}

        def ok(node: Node) -> bool:
            c = node.client()
            try:
                if c.cluster("info").get("cluster_state") != "ok":
                    return False
                slots = c.execute_command("CLUSTER SLOTS")
                covered = sum(int(r[1]) - int(r[0]) + 1 for r in slots if int(r[2][1]) in alive)
                return bool(covered == 16384)
            finally:
                c.close()

        def synced(node: Node) -> bool:
            c = node.client()
            try:
                info = c.info("replication")
                return bool(info["role"] == "master" or info.get("master_link_status") == "up")
            finally:
                c.close()

        for node in self.live():
            self._wait(lambda n=node: ok(n), deadline, f"node {node.addr} never saw cluster_state:ok")
            self._wait(lambda n=node: synced(n), deadline, f"replica {node.addr} never synced")

    def pids(self) -> list[int]:
        """The live nodes' process ids (for CPU sampling)."""
        return [n.proc.pid for n in self.live() if n.proc is not None]

    def primaries(self) -> list[Node]:
        out = []
        for node in self.live():
            c = node.client()
            try:
                if c.info("replication")["role"] == "master":
                    out.append(node)
            finally:
                c.close()
        return out

    def flush(self) -> None:
        for node in self.primaries():
            c = node.client()
            try:
                c.flushall()
            finally:
                c.close()

    def master_of(self, key: str) -> Node:
        """The live master serving ``key``'s slot."""
        return self.master_of_slot(redis.crc.key_slot(key.encode()))

    def node_id(self, node: Node) -> str:
        c = node.client()
        try:
            return str(c.execute_command("CLUSTER", "MYID").decode())
        finally:
            c.close()

    def move_slot(self, slot: int, target: Node, *, between: object = None) -> None:
        """Move ``slot`` to ``target`` the way ``redis-cli --cluster reshard`` does: IMPORTING on
        the target, MIGRATING on the source, MIGRATE its keys a few at a time (calling
        ``between()`` after the first batch, while the slot is half moved: clients get ASK), then
        tell every master the slot's new owner (clients get MOVED)."""
        source = self.master_of_slot(slot)
        if source is target:
            return
        src, dst = source.client(), target.client()
        try:
            src_id, dst_id = self.node_id(source), self.node_id(target)
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            first = True
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 2):
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
                if first and between is not None:
                    between()  # type: ignore[operator]
                first = False
            for node in self.primaries():
                c = node.client()
                try:
                    c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
                finally:
                    c.close()
        finally:
            src.close()
            dst.close()

    def master_of_slot(self, slot: int) -> Node:
        for node in self.live():
            c = node.client()
            try:
                for start, end, master, *_ in c.execute_command("CLUSTER SLOTS"):
                    if int(start) <= slot <= int(end):
                        return next(n for n in self.nodes if n.port == int(master[1]))
            finally:
                c.close()
        raise RuntimeError("no live node answers CLUSTER SLOTS")

    def kill(self, node: Node) -> None:
        """SIGKILL: no shutdown, no save; the cluster notices after ``cluster-node-timeout``."""
        assert node.proc is not None
        node.proc.kill()
        node.proc.wait()

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
        for node in self.nodes:
            if node.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.proc.wait(timeout=5)
