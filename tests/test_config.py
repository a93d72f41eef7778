"""Configuration as an operator meets it: every mistake is refused in one line that names the
key, the environment beats the file, and ``parley run`` with a bad file exits 2 without a
traceback."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.app.settings import load_config
from engine.core.config import parse_duration
from engine.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
#: An empty config file, so that a parley.yaml in the working directory is not read.
NO_FILE = os.devnull
KEY_A = "a" * 16 + "-first-key"
KEY_B = "b" * 16 + "-second-key"


@dataclass(frozen=True)
class BadFile:
    label: str
    yaml: str
    key: str  # "{file}" stands for the config file's path


BAD_FILES = [
    BadFile("unknown section", "htttp:\n  port: 80\n", "htttp"),
    BadFile("unknown key in http", "http:\n  prot: 80\n", "http.prot"),
    BadFile("port in words", "http:\n  port: eighty\n", "http.port"),
    BadFile("port out of range", "http:\n  port: 70000\n", "http.port"),
    BadFile("section that is not a mapping", "http: 8080\n", "http"),
    BadFile("duration in words", "engine:\n  dedupe_window: soon\n", "engine.dedupe_window"),
    BadFile("no shards", "engine:\n  shards: 0\n", "engine.shards"),
    BadFile("unknown log level", "log:\n  level: loud\n", "log.level"),
    BadFile("unknown gateway type", "gateways:\n  x:\n    type: pigeon\n", "gateways.x.type"),
    BadFile("http gateway without url", "gateways:\n  x:\n    type: http\n", "gateways.x.url"),
    BadFile("default gateway not configured", "engine:\n  default_gateway: sms\n", "engine.default_gateway"),
    BadFile("short API key", "api:\n  keys: [short]\n", "api.keys[0]"),
    BadFile("API keys not a list", f"api:\n  keys: {KEY_A}\n", "api.keys"),
    BadFile("invalid YAML", "http:\n  port: 80\n   host: x\n", "{file}:3"),
    BadFile("key written twice", "http:\n  port: 80\n  port: 8080\n", "{file}:3"),
    BadFile("unknown region", "numbers:\n  default_region: ZZ\n", "numbers.default_region"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_FILES, ids=[c.label for c in BAD_FILES])
def test_a_bad_config_file_is_refused_naming_the_key(case: BadFile, tmp_path: Path) -> None:
    path = tmp_path / "parley.yaml"
    path.write_text(case.yaml)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    key = case.key.format(file=path)
    assert info.value.key == key
    message = str(info.value)
    assert "\n" not in message and key in message


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.key == str(path)
    assert str(info.value) == f"config: {path}: file not found"


def test_an_empty_file_means_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "parley.yaml"
    path.write_text("# nothing here yet\n")
    cfg = load_config(path, env={})
    assert (cfg.http.host, cfg.http.port, cfg.engine.dedupe_window) == ("127.0.0.1", 8080, 86400.0)


# --- the environment --------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvCase:
    label: str
    env: dict[str, str]
    section: str
    field: str
    expected: object


ENV_CASES = [
    EnvCase("port is a number", {"PARLEY_HTTP_PORT": "9090"}, "http", "port", 9090),
    EnvCase("API keys are comma-separated", {"PARLEY_API_KEYS": f"{KEY_A}, {KEY_B}"}, "api", "keys", [KEY_A, KEY_B]),
    EnvCase("redis url", {"PARLEY_REDIS_URL": "redis://cache:6379/2"}, "redis", "url", "redis://cache:6379/2"),
    EnvCase("duration", {"PARLEY_ENGINE_DEDUPE_WINDOW": "15m"}, "engine", "dedupe_window", 900.0),
    EnvCase("replicas to wait for", {"PARLEY_REDIS_WAIT_REPLICAS": "1"}, "redis", "wait_replicas", 1),
    EnvCase("sentinels are comma-separated", {"PARLEY_REDIS_URL": "redis://x/0", "PARLEY_REDIS_SENTINELS": "a:26379, b:26380",
            "PARLEY_REDIS_SENTINEL_MASTER": "parley"}, "redis", "sentinels", ["a:26379", "b:26380"]),
]  # fmt: skip


@pytest.mark.parametrize("case", ENV_CASES, ids=[c.label for c in ENV_CASES])
def test_environment_sets_a_key(case: EnvCase) -> None:
    cfg = load_config(NO_FILE, env=case.env)
    value = getattr(getattr(cfg, case.section), case.field)
    assert value == case.expected
    assert isinstance(value, type(case.expected))  # 9090, not "9090"


@dataclass(frozen=True)
class BadEnv:
    label: str
    env: dict[str, str]
    key: str


BAD_ENV = [
    BadEnv("unknown override", {"PARLEY_HTTP_PROT": "80"}, "PARLEY_HTTP_PROT"),
    BadEnv("section, not a key", {"PARLEY_HTTP": "80"}, "PARLEY_HTTP"),
    BadEnv("port in words", {"PARLEY_HTTP_PORT": "eighty"}, "http.port"),
    BadEnv("port with two minus signs", {"PARLEY_HTTP_PORT": "--5"}, "http.port"),
    BadEnv("port in superscript digits", {"PARLEY_HTTP_PORT": "²"}, "http.port"),
    BadEnv("empty port", {"PARLEY_HTTP_PORT": ""}, "http.port"),
    BadEnv("short key among good ones", {"PARLEY_API_KEYS": f"{KEY_A},short"}, "api.keys[1]"),
    BadEnv("negative replicas", {"PARLEY_REDIS_WAIT_REPLICAS": "-1"}, "redis.wait_replicas"),
    BadEnv("WAIT 0 would wait for ever", {"PARLEY_REDIS_WAIT_TIMEOUT": "0"}, "redis.wait_timeout"),
    BadEnv("a sentinel without a port", {"PARLEY_REDIS_URL": "redis://x/0", "PARLEY_REDIS_SENTINELS": "a:26379,b",
           "PARLEY_REDIS_SENTINEL_MASTER": "m"}, "redis.sentinels[1]"),
    BadEnv("sentinels without the master's name", {"PARLEY_REDIS_URL": "redis://x/0", "PARLEY_REDIS_SENTINELS": "a:1"},
           "redis.sentinel_master"),
    BadEnv("a master's name without sentinels", {"PARLEY_REDIS_SENTINEL_MASTER": "m"}, "redis.sentinels"),
    BadEnv("sentinels and no url (the embedded server)", {"PARLEY_REDIS_SENTINELS": "a:1",
           "PARLEY_REDIS_SENTINEL_MASTER": "m"}, "redis.url"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_ENV, ids=[c.label for c in BAD_ENV])
def test_a_bad_environment_override_is_refused_naming_it(case: BadEnv) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(NO_FILE, env=case.env)
    assert info.value.key == case.key
    assert "\n" not in str(info.value)


def test_parley_config_names_the_file_and_the_environment_beats_it(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("http:\n  host: 0.0.0.0\n  port: 8000\n")
    cfg = load_config(None, env={"PARLEY_CONFIG": str(path), "PARLEY_HTTP_PORT": "9000"})
    assert (cfg.http.host, cfg.http.port) == ("0.0.0.0", 9000)


def test_overrides_beat_the_file_and_the_environment_beats_both(tmp_path: Path) -> None:
    path = tmp_path / "parley.yaml"
    path.write_text("http:\n  host: 10.0.0.1\n  port: 8000\n")
    cfg = load_config(path, env={"PARLEY_HTTP_PORT": "9000"}, overrides={"http": {"port": 1, "host": "::"}})
    assert (cfg.http.host, cfg.http.port) == ("::", 9000)


@given(port=st.integers(0, 65535))
def test_any_valid_port_from_the_environment_is_used(port: int) -> None:
    assert load_config(NO_FILE, env={"PARLEY_HTTP_PORT": str(port)}).http.port == port


NUMBERISH = st.text(alphabet=st.sampled_from("-+ .,_0123456789²٣x"), max_size=6)


@given(
    text=(NUMBERISH | st.text(max_size=12)).filter(
        lambda s: not (s.strip().isascii() and s.strip().isdigit())
    )
)
def test_a_port_that_is_not_a_number_is_a_config_error_not_a_crash(text: str) -> None:
    try:
        port = load_config(NO_FILE, env={"PARLEY_HTTP_PORT": text}).http.port
    except ConfigError as exc:
        assert exc.key == "http.port"
    else:  # "-0" is a fine way to write 0
        assert port == 0 and int(text) == 0


# --- what a value may be written as -------------------------------------------------------------
# The library's own lax rules would read 8080.0 and "1_0" as whole numbers and 1 as true; its
# strict ones would refuse "9090" from a file. Parley's rules are the same as before it.


@dataclass(frozen=True)
class ValueCase:
    label: str
    yaml: str
    key: str
    outcome: object  # the value read, or the error's message


VALUE_CASES = [
    ValueCase("a decimal is not a port", "http: {port: 8080.0}", "http.port", "expected a whole number, got 8080.0"),
    ValueCase("underscores are not a port", "http: {port: '1_0'}", "http.port", "expected a whole number, got '1_0'"),
    ValueCase("a quoted port is read", "http: {port: ' 9090 '}", "http.port", 9090),
    ValueCase("1 is not true", "governance: {exempt_replies: 1}", "governance.exempt_replies", "expected true or false, got 1"),
    ValueCase("off in quotes is false", "governance: {exempt_replies: 'off'}", "governance.exempt_replies", False),
    ValueCase("true is not a rate", "engine: {inbound_rate: true}", "engine.inbound_rate", "expected a number, got True"),
    ValueCase("a quoted rate is read", "engine: {inbound_rate: '2.5'}", "engine.inbound_rate", 2.5),
    ValueCase("a number is not a text", "log: {level: 3}", "log.level", "expected a string, got 3"),
    ValueCase("an empty text is empty", "engine: {default_gateway: }", "engine.default_gateway", ""),
    ValueCase("an empty section is the defaults", "http:", "http.port", 8080),
    ValueCase("an empty mapping is empty", "gateways:", "gateways", {}),
    ValueCase("a list of sections names the item", "crm: {webhooks: [{url: 'http://crm'}]}", "crm.webhooks[0].secret", "missing required key"),
    ValueCase("a connector's option too", "gateways: {s: {type: http, url: 'http://x', concurrency: 2.0}}", "gateways.s.concurrency", "expected a whole number, got 2.0"),
    ValueCase("a connector's unknown key", "gateways: {s: {type: console, voice: true}}", "gateways.s.voice", "unknown key (known: sender)"),
]  # fmt: skip


@pytest.mark.parametrize("case", VALUE_CASES, ids=[c.label for c in VALUE_CASES])
def test_what_a_value_may_be_written_as(case: ValueCase, tmp_path: Path) -> None:
    path = tmp_path / "parley.yaml"
    path.write_text(case.yaml + "\n")
    if isinstance(case.outcome, str) and case.outcome.startswith(("expected", "missing", "unknown")):
        with pytest.raises(ConfigError) as info:
            load_config(path, env={})
        assert (info.value.key, info.value.problem) == (case.key, case.outcome)
    else:
        value: object = load_config(path, env={})
        for part in case.key.split("."):
            value = getattr(value, part)
        assert value == case.outcome and type(value) is type(case.outcome)


# --- durations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DurationCase:
    label: str
    text: object
    seconds: float | None  # None: refused


DURATIONS = [
    DurationCase("milliseconds", "500ms", 0.5),
    DurationCase("minutes", "15m", 900.0),
    DurationCase("days", "7d", 604800.0),
    DurationCase("hours with spaces", " 24 h ", 86400.0),
    DurationCase("bare number", 30, 30.0),
    DurationCase("bare decimal", 1.5, 1.5),
    DurationCase("words", "soon", None),
    DurationCase("unknown unit", "3y", None),
    DurationCase("true is not a duration", True, None),
    DurationCase("nothing", None, None),
]


@pytest.mark.parametrize("case", DURATIONS, ids=[c.label for c in DURATIONS])
def test_durations(case: DurationCase) -> None:
    if case.seconds is None:
        with pytest.raises(ValueError, match="expected a duration like 30s"):
            parse_duration(case.text)
    else:
        assert parse_duration(case.text) == case.seconds


@given(n=st.integers(0, 10_000), unit=st.sampled_from([("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]))
def test_a_duration_is_its_number_times_its_unit(n: int, unit: tuple[str, int]) -> None:
    assert parse_duration(f"{n}{unit[0]}") == n * unit[1]


# --- the command line -------------------------------------------------------------------------


@dataclass(frozen=True)
class CliCase:
    label: str
    yaml: str
    env: dict[str, str]
    key: str


CLI_CASES = [
    CliCase("port in words in the file", "http: {port: eighty}\n", {}, "http.port"),
    CliCase("mangled port in the environment", "", {"PARLEY_HTTP_PORT": "--5"}, "http.port"),
    CliCase("unknown override", "", {"PARLEY_HTTP_PROT": "80"}, "PARLEY_HTTP_PROT"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.label for c in CLI_CASES])
def test_parley_run_with_a_bad_config_exits_2_with_one_line(case: CliCase, tmp_path: Path) -> None:
    path = tmp_path / "parley.yaml"
    path.write_text(case.yaml)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")} | case.env
    done = subprocess.run(
        [str(ROOT / ".venv/bin/parley"), "--config", str(path), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and case.key in lines[0], done.stderr
