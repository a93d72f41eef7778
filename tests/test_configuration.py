"""Configuration: one-line errors naming the key, environment overrides, durations."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.app.settings import load_config
from engine.core.config import parse_duration
from engine.core.errors import ConfigError
from tests.conftest import run_parley


@dataclass(frozen=True)
class Bad:
    label: str
    yaml: str
    key: str
    says: str


BAD_FILES = [
    Bad("unknown section", "htp: {port: 1}\n", "htp", "unknown key"),
    Bad("unknown key", "http: {prot: 1}\n", "http.prot", "known: host, max_body_bytes, port"),
    Bad("wrong type", "http: {port: eighty}\n", "http.port", "expected a whole number"),
    Bad("port out of range", "http: {port: 70000}\n", "http.port", "0..65535"),
    Bad("bad duration", "engine: {dedupe_window: soon}\n", "engine.dedupe_window", "duration"),
    Bad("no shards", "engine: {shards: 0}\n", "engine.shards", "1..1024"),
    Bad("log level", "log: {level: loud}\n", "log.level", "debug, info"),
    Bad("short api key", "api: {keys: [abc]}\n", "api.keys[0]", "at least 16"),
    Bad("keys not a list", "api: {keys: abcdefghijklmnopqrst}\n", "api.keys", "expected a list"),
    Bad("region", "numbers: {default_region: ZZ}\n", "numbers.default_region", "unknown region"),
    Bad("gateway type", "gateways: {x: {type: carrier-pigeon}}\n", "gateways.x.type", "http"),
    Bad("gateway url missing", "gateways: {x: {type: http}}\n", "gateways.x.url", "missing required"),
    Bad("gateway typo", "gateways: {x: {type: http, url: u, sendr: s}}\n", "gateways.x.sendr", "unknown key"),
    Bad("default gateway", "engine: {default_gateway: nope}\n", "engine.default_gateway", "not in gateways"),
    Bad("top level list", "- a\n- b\n", "", "mapping"),
]


@pytest.mark.parametrize("case", BAD_FILES, ids=[c.label for c in BAD_FILES])
def test_bad_config_names_the_key_in_one_line(tmp_path: Path, case: Bad) -> None:
    path = tmp_path / "parley.yaml"
    path.write_text(case.yaml)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    err = info.value
    if case.key:
        assert err.key == case.key
    assert case.says in str(err)
    assert "\n" not in str(err)


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "parley.yaml"
    path.write_text("http:\n  port: 1\n   host: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.key == f"{path}:3"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml", env={})


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "parley.yaml"
    path.write_text("http: {port: 8000, host: 0.0.0.0}\nredis: {url: redis://file:1/0}\n")
    cfg = load_config(
        env={
            "PARLEY_CONFIG": str(path),
            "PARLEY_HTTP_PORT": "9090",
            "PARLEY_API_KEYS": "aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb",
            "PARLEY_REDIS_URL": "redis://env:2/0",
            "PARLEY_ENGINE_DEDUPE_WINDOW": "2h",
            "UNRELATED": "x",
        }
    )
    assert cfg.http.port == 9090 and cfg.http.host == "0.0.0.0"
    assert cfg.api.keys == ["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"]
    assert cfg.redis.url == "redis://env:2/0"
    assert cfg.engine.dedupe_window == 7200


@pytest.mark.parametrize(
    ("env", "key"),
    [({"PARLEY_HTTP_PROT": "1"}, "PARLEY_HTTP_PROT"), ({"PARLEY_HTTP_PORT": "x"}, "http.port")],
)
def test_bad_environment_override(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=env)
    assert info.value.key == key


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("30s", 30), ("15m", 900), ("24h", 86400), ("7d", 604800), (42, 42)]
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "5 parsecs", True, None, "-5s"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_parley_run_with_bad_config_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("http: {port: eighty}\n")
    proc = run_parley("--config", str(path), "run")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "parley: config: http.port: expected a whole number, got 'eighty'"
