"""The Docker Compose files, checked without Docker (none runs here): every Parley service's
command is one the real ``parley`` parser takes and runs the role it says, every environment
name it sets is a real configuration override and the values load, and the services start in
an order that works (the Redis Cluster's nodes answer before it is created, Parley starts once
it is). ``docker-compose.yml``: Parley on one Redis; ``deploy/compose-cluster.yml``: Parley's
roles on a 3-master Redis Cluster with a replica each."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from engine.app.cli import _parser, _run_options
from engine.app.settings import load_config
from engine.core.config import ROLES, Config
from engine.core.errors import ConfigError
from tests.conftest import ROOT

CLUSTER = ROOT / "deploy" / "compose-cluster.yml"
SINGLE = ROOT / "docker-compose.yml"
#: What a user sets in their shell or .env before ``docker compose up``.
SHELL = {"PARLEY_API_KEYS": "compose-key-0123456789abcdef"}
NODES = [f"redis-{i}" for i in range(1, 7)]


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())  # resolves the x- anchors and <<: merges
    return data


def _interpolate(value: str) -> str:
    """Compose's variable substitution: ``${X:?message}``, ``${X:-default}``, ``${X}``, ``$$``."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in SHELL:
            return SHELL[name]
        if op == ":?":
            raise AssertionError(f"compose would stop: {arg}")
        return arg or ""

    out = re.sub(r"\$\{(\w+)(?:(:\?|:-)([^}]*))?\}", one, value)
    return out.replace("$$", "$")


def _dockerfile() -> tuple[list[str], list[str], dict[str, str]]:
    """The image's ENTRYPOINT, CMD and PARLEY_* ENV."""
    entry: list[str] = []
    cmd: list[str] = []
    env: dict[str, str] = {}
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("ENTRYPOINT "):
            entry = json.loads(line.split(" ", 1)[1])
        elif line.startswith("CMD "):
            cmd = json.loads(line.split(" ", 1)[1])
        elif line.startswith("ENV "):
            for word in shlex.split(line[4:]):
                name, _, value = word.partition("=")
                if name.startswith("PARLEY_"):
                    env[name] = value
    return entry, cmd, env


def _parley(path: Path, service: dict[str, Any]) -> tuple[Config, frozenset[str]]:
    """What ``docker compose up`` would run in ``service``: its argv through the real parser,
    its environment (over the image's) through the real configuration loader, the mounted
    configuration being the example one (what users copy to parley.yaml)."""
    entry, cmd, image_env = _dockerfile()
    assert entry == ["parley"]
    argv = service.get("command", cmd)
    assert isinstance(argv, list), "exec form: no shell between docker and parley"
    args = _parser().parse_args(argv)
    assert args.command == "run"
    env = {**image_env, **{k: _interpolate(str(v)) for k, v in service.get("environment", {}).items()}}
    cfg = load_config(ROOT / "parley.example.yaml", env)
    # The build context and the mounted configuration are the repository's.
    build = service["build"]
    context = path.parent / (build if isinstance(build, str) else build.get("context", "."))
    assert (context.resolve() / "Dockerfile").is_file()
    mounts = [v.split(":") for v in service.get("volumes", [])]
    assert [(path.parent / m[0]).resolve() for m in mounts if m[1] == "/app/parley.yaml"] == [
        ROOT / "parley.yaml"
    ]
    return _run_options(cfg, args)


def _parley_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def _redis_host(cfg: Config) -> str:
    host = urlsplit(cfg.redis.url).hostname
    assert host is not None
    return host


def test_the_cluster_file_runs_each_role_with_the_real_command_line_and_configuration() -> None:
    compose = _load(CLUSTER)
    services = _parley_services(compose)
    assert set(services) == {"api", "worker", "sender"}
    ran: dict[str, tuple[Config, frozenset[str]]] = {n: _parley(CLUSTER, s) for n, s in services.items()}
    assert {n: roles for n, (_, roles) in ran.items()} == {
        "api": {"api"}, "worker": {"worker"}, "sender": {"sender"},
    }  # fmt: skip
    # Every role runs somewhere, but the SMPP server's: it needs accounts in the mounted
    # configuration, and the file carries it commented out, ready to be switched on.
    assert set().union(*(roles for _, roles in ran.values())) == set(ROLES) - {"smpp-server"}
    assert '#   command: ["run", "--role", "smpp-server"]' in CLUSTER.read_text()
    assert ran["api"][0].engine.api_processes == 2
    assert ran["worker"][0].engine.workers == 2
    for name, (cfg, _) in ran.items():
        assert cfg.redis.cluster is True, name
        assert _redis_host(cfg) in NODES, name
        assert {n.split(":")[0] for n in cfg.redis.nodes} <= set(NODES), name
        assert cfg.api.keys == [SHELL["PARLEY_API_KEYS"]]
    # Only the API is published, on its configured port, to this host.
    assert [name for name, s in services.items() if s.get("ports")] == ["api"]
    (published,) = services["api"]["ports"]
    assert published == f"127.0.0.1:8080:{ran['api'][0].http.port}"
    assert ran["api"][0].http.host == "0.0.0.0"  # inside the container


def test_the_cluster_file_has_six_nodes_with_aof_and_creates_3_masters_with_a_replica_each() -> None:
    services = _load(CLUSTER)["services"]
    nodes = {n: s for n, s in services.items() if s.get("command", [""])[0] == "redis-server"}
    assert sorted(nodes) == NODES
    for name, svc in nodes.items():
        argv = svc["command"]
        opts = dict(zip(argv[1::2], argv[2::2], strict=True))
        assert opts["--cluster-enabled"] == "yes" and opts["--appendonly"] == "yes", name
        assert opts["--cluster-announce-hostname"] == name  # redirects name the service
        assert svc["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"], name
        assert svc["volumes"] == [f"{name}-data:/data"], name  # AOF and nodes.conf survive a restart
    create = services["redis-cluster-create"]
    script = _interpolate(create["command"][-1])
    assert create["command"][:2] == ["sh", "-c"] and create["restart"] == "no"
    loop = re.search(r"for node in ([^;]+); do", script)
    assert loop is not None and loop.group(1).split() == NODES  # all six, each once
    line = next(ln for ln in script.splitlines() if "--cluster create" in ln)
    assert "--cluster-replicas 1" in line and "--cluster-yes" in line  # 6 nodes: 3 masters + 3 replicas
    assert "cluster_state:ok" in script  # done means every slot is served, and re-running is harmless
    # The nodes answer before the cluster is created; Parley starts once it was.
    assert create["depends_on"] == {n: {"condition": "service_healthy"} for n in NODES}
    for name, svc in _parley_services(_load(CLUSTER)).items():
        assert svc["depends_on"] == {
            "redis-cluster-create": {"condition": "service_completed_successfully"}
        }, name


def test_the_single_node_file_runs_every_role_on_its_redis() -> None:
    compose = _load(SINGLE)
    services = _parley_services(compose)
    assert set(services) == {"parley"}
    cfg, roles = _parley(SINGLE, services["parley"])
    assert roles == set(ROLES) and cfg.redis.cluster is False
    assert _redis_host(cfg) in compose["services"]
    redis = compose["services"][_redis_host(cfg)]
    assert "--appendonly" in redis["command"] and "healthcheck" in redis
    assert services["parley"]["depends_on"] == {_redis_host(cfg): {"condition": "service_healthy"}}
    assert services["parley"]["ports"] == [f"127.0.0.1:8080:{cfg.http.port}"]


def test_a_misspelled_environment_name_would_be_caught() -> None:
    """The check above is worth something: Parley refuses an override it does not know."""
    with pytest.raises(ConfigError, match="PARLEY_REDIS_CLUSTERS"):
        load_config(ROOT / "parley.example.yaml", {"PARLEY_REDIS_CLUSTERS": "true"})
