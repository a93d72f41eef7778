"""The local Redis Cluster the tests start: it lives in loadtests/redis_cluster.py, shared with
``make bench BENCH_ARGS=--cluster``; imported here under its old name."""

from loadtests.redis_cluster import NODE_TIMEOUT_MS, LocalCluster, Node

__all__ = ["NODE_TIMEOUT_MS", "LocalCluster", "Node"]
