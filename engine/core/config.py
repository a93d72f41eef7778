"""Configuration: one YAML file plus ``PARLEY_*`` environment overrides, validated once.

The schema is the dataclasses below. Every leaf can be overridden from the environment by its
path in upper case, joined by ``_``: ``redis.url`` is ``PARLEY_REDIS_URL``, ``http.port`` is
``PARLEY_HTTP_PORT``, ``api.keys`` is ``PARLEY_API_KEYS`` (comma-separated). Anything wrong (an
unknown key, a missing one, a wrong type, a bad duration) raises :class:`ConfigError`, whose
message is a single line naming the key.

Pydantic (as for the API models) validates, with Parley's scalars swapped into its core schema:
its lax ones take "1_0" and 5.0 as whole numbers, its strict ones refuse environment text. Over
500 lines: the schema, its validation and the core's cross-field checks live together. The
checks owned by parts above the core are theirs, handed in by engine/app/settings.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import TypeAdapter, ValidationError
from pydantic_core import SchemaValidator, core_schema

from engine.core.errors import ConfigError

DEFAULT_CONFIG_FILE = "parley.yaml"
ENV_PREFIX = "PARLEY_"
#: The readiness pipe a supervisor hands each worker process it starts (engine.app.supervisor).
READY_FD_ENV = "PARLEY_READY_FD"
#: Environment variables with the prefix that are not config leaves.
ENV_RESERVED = frozenset({"PARLEY_CONFIG", READY_FD_ENV})


class Duration(float):
    """Seconds, written in config as ``500ms``, ``30s``, ``15m``, ``24h``, ``7d`` or a number."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(lambda value: cls(parse_duration(value)))


_INT_RE = re.compile(r"^\s*-?[0-9]+\s*$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_cap(text: str) -> tuple[int, int]:
    """``"4 per 30d"`` -> (4, window in ms)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:per|/)\s*(\S+)\s*", text)
    if not m or int(m.group(1)) < 1:
        raise ValueError(f"expected a cap like '4 per 30d', got {text!r}")
    window = parse_duration(m.group(2))
    if window < 60:
        raise ValueError(f"a cap's window must be at least 1m, got {text!r}")
    return int(m.group(1)), int(window * 1000)


#: The roles a Parley process can take (``engine.role``, ``parley run --role``).
ROLES = ("api", "worker", "sender", "smpp-server")


def parse_roles(text: str, key: str = "engine.role") -> frozenset[str]:
    """``"all"`` -> every role; ``"api,sender"`` -> those two. Raises ConfigError naming ``key``."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if words == ["all"]:
        return frozenset(ROLES)
    unknown = [w for w in words if w not in ROLES]
    if not words or unknown:
        raise ConfigError(key, f"must be all, or {', '.join(ROLES)} joined by commas; got {text!r}")
    return frozenset(words)


def parse_duration(value: object) -> float:
    """Parse a duration (see :class:`Duration`); raise ValueError on anything else."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 15m, 24h or 7d")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    raise ValueError(f"expected a duration like 30s, 15m, 24h or 7d, got {value!r}")


@dataclass(frozen=True)
class RedisConfig:
    #: ``redis://host:port/db``; when empty, Parley runs its own redis-server (embedded).
    url: str = ""
    #: Where the embedded redis-server keeps its data and AOF.
    embedded_dir: str = "var/redis"
    #: Upper bound of the blocking connection pool (callers wait, never fail, when it is full).
    max_connections: int = 64
    #: How long a caller waits for a pooled connection before giving up.
    pool_timeout: Duration = Duration(5.0)
    #: Replicas that must hold an inbound text or a flow start before the peer is told it is
    #: taken (Redis WAIT). 0: acknowledged once the primary has it (asynchronous replication).
    wait_replicas: int = 0
    #: How long intake waits for those replicas; then the peer gets a retryable refusal
    #: (HTTP 503 with Retry-After, SMPP ESME_RX_T_APPN).
    wait_timeout: Duration = Duration(1.0)
    #: Redis Sentinel addresses ("host:port"); when set, the primary is the one they name as
    #: ``sentinel_master`` and ``url`` gives only the database number and credentials.
    sentinels: list[str] = field(default_factory=list)
    #: The master name the sentinels monitor (``sentinel monitor NAME ...``).
    sentinel_master: str = ""
    #: Password of the sentinels themselves ("" = none; the data nodes' is in ``url``).
    sentinel_password: str = ""
    #: ``redis.url`` names a node of a Redis Cluster (any node; the others are discovered).
    cluster: bool = False
    #: More cluster nodes to discover it from ("host:port"), tried when ``redis.url``'s is down.
    nodes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    #: Larger request bodies are refused with 413.
    max_body_bytes: int = 1_048_576


@dataclass(frozen=True)
class ApiConfig:
    #: Bearer keys accepted by every /v1 route. Empty means the API refuses every request.
    keys: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class NumbersConfig:
    #: Region (ISO 3166 alpha-2) used to read numbers written without a country code.
    default_region: str = "GB"


@dataclass(frozen=True)
class EngineConfig:
    #: Inbound streams are sharded by a hash of the contact; one contact always maps to one shard.
    shards: int = 8
    #: How long a (gateway, provider id) pair is remembered to drop duplicate inbound texts.
    dedupe_window: Duration = Duration(86400.0)
    #: Inbound texts per second (all connectors) the dedupe map is sized for (engine/core/idmaps.py):
    #: more costs memory (its hashes outgrow Redis's compact encoding), never correctness.
    inbound_rate: float = 100.0
    #: Where flows (YAML) are loaded from.
    flows_dir: str = "rules"
    #: Gateway used for flow starts and for replies to texts from a gateway that cannot send.
    default_gateway: str = ""
    #: How many stream entries one worker reads per batch.
    batch_size: int = 256
    #: How many message log entries are kept per contact.
    message_log_size: int = 200
    #: A contact's message log expires after this long without a new message.
    message_log_ttl: Duration = Duration(30 * 86400.0)
    #: How long graceful shutdown waits for in-flight turns and sends.
    shutdown_timeout: Duration = Duration(10.0)
    #: How often due timers (wait timeouts, expiry) are moved onto the inbound streams.
    timer_poll: Duration = Duration(0.1)
    #: What ``parley run`` runs: ``all`` (one machine), or any of ``api``, ``worker``, ``sender``
    #: joined by commas (engine/app/cli.py: the roles).
    role: str = "all"
    #: Worker processes ``parley run`` starts (1: the worker runs inside the main process).
    workers: int = 1
    #: API processes ``parley run`` serves with, sharing ``http.port`` (SO_REUSEPORT): 1 = the
    #: main process only; N starts N - 1 more ``parley api`` processes beside it.
    api_processes: int = 1
    #: A worker's hold on its shards; a dead worker's shards are taken over after at most this.
    lease_ttl: Duration = Duration(5.0)
    #: Flow outcome events kept per shard (runs, replies, results, message statuses; about 170
    #: bytes each; ``shards`` streams of this length): reports and result exports cover the runs
    #: whose events are still there.
    outcome_events_max: int = 125_000
    #: A conversion the CRM reports is attributed to the contact's last journey start within this.
    attribution_window: Duration = Duration(7 * 86400.0)
    #: A message longer than this many SMS segments is not sent: its run fails (docs/flows.md).
    #: 10 segments (1,530 GSM-7 characters) is what carriers commonly accept.
    max_segments: int = 10
    #: A flow file larger than this is refused (bytes).
    max_flow_bytes: int = 262_144
    #: A flow file whose mappings and lists nest deeper than this is refused.
    max_flow_depth: int = 32
    #: A flow with more nodes than this is refused.
    max_flow_nodes: int = 1_000
    #: A text that matches no conversation (no flow waiting, no trigger): ``ignore`` it (logged
    #: only), or put the contact in the ``inbox`` for a person (engine/conversation/inbox.py).
    unmatched: str = "ignore"
    #: Values every flow run sees as ``params.NAME`` unless its start gives its own (e.g. the
    #: CRM's base URL for ``call`` nodes of flows started by a keyword).
    flow_params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GovernanceConfig:
    #: Language of confirmations when neither the contact's nor the keyword's has a text.
    default_language: str = "en"
    #: Extra keywords: {opt_out|opt_in|help|opt_out_marketing: {language: [words]}} (merged over
    #: the defaults).
    keywords: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    #: Confirmation texts: {opt_out|opt_in|help: {language: text}} (merged over the defaults).
    messages: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Frequency caps over rolling windows, all programmes together, e.g. ["4 per 30d", "1 per 1d"].
    caps: list[str] = field(default_factory=list)
    #: Replies to a customer's text inside a conversational flow do not count towards the caps.
    exempt_replies: bool = True
    #: When business-started messages may be sent, recipient's local time ("08:00-21:00"; "" = any time).
    send_window: str = ""
    #: Per-day windows overriding send_window: {mon..sun or holiday: "10:00-16:00" or "" (none)}.
    send_windows: dict[str, str] = field(default_factory=dict)
    #: Country code whose public holidays use the "holiday" window (no sending unless set).
    holidays: str = ""
    #: Time zone of recipients whose zone is unknown (no contact timezone, ambiguous number).
    default_timezone: str = "UTC"
    #: A deferred send leaves within this long after the window opens (spread per contact).
    quiet_jitter: Duration = Duration(900.0)
    #: Replies to the customer's own text are sent in quiet hours too.
    quiet_allows_replies: bool = True
    #: HMAC key naming the consent ledger of an erased contact ("" = one generated and kept in Redis).
    erasure_key: str = ""


#: What ``engine.unmatched`` may say.
UNMATCHED = ("ignore", "inbox")

#: Outcome event types a CRM webhook can subscribe to (engine/conversation/outcomes.py).
WEBHOOK_EVENTS = (
    "message",
    "replied",
    "result",
    "started",
    "ended",
    "consent",
    "assigned",
    "skipped",
    "deferred",
    "conversion",
    "opt_out_review",
    "inbox",
)


@dataclass(frozen=True)
class WebhookConfig:
    #: Where outcome events are POSTed (http or https).
    url: str
    #: HMAC key for X-Parley-Signature (16+ characters).
    secret: str
    #: Event types sent (the others are skipped).
    events: list[str] = field(default_factory=lambda: list(WEBHOOK_EVENTS))
    #: One request's time limit.
    timeout: Duration = Duration(5.0)
    #: Attempts for retryable failures before the event goes to the dead letters.
    max_attempts: int = 8
    #: First retry wait; doubles per attempt with jitter, up to backoff_max (Retry-After wins).
    backoff: Duration = Duration(1.0)
    backoff_max: Duration = Duration(300.0)
    #: Events per request: 1 sends one JSON object, more sends a JSON array of up to this many.
    batch: int = 1


@dataclass(frozen=True)
class CrmConfig:
    #: Outcome webhooks: flow outcome events pushed to the CRM (engine/crm/webhooks.py).
    webhooks: list[WebhookConfig] = field(default_factory=list)


#: The console's roles, each allowed what the ones before it are (engine/console/auth.py).
CONSOLE_ROLES = ("viewer", "operator", "admin")


@dataclass(frozen=True)
class ConsoleUser:
    #: The login name.
    name: str
    #: An argon2 hash of the password (``parley console hash-password`` prints one).
    password_hash: str
    #: viewer (reads; numbers masked), operator (answers, cancels, unmasks), admin (everything).
    role: str = "viewer"


@dataclass(frozen=True)
class ConsoleConfig:
    """The browser console under ``/console/`` (docs/console.md)."""

    #: Who may log in. Empty: the console shows its login page and lets nobody in.
    users: list[ConsoleUser] = field(default_factory=list)
    #: A session unused this long is over (the user logs in again).
    session_idle_timeout: Duration = Duration(1800.0)
    #: Failed logins of one user name within ``lockout_window`` that lock it out for the window.
    lockout_attempts: int = 5
    lockout_window: Duration = Duration(900.0)
    #: Mark the session cookie Secure even on plain HTTP (Parley behind a TLS proxy); it is
    #: Secure anyway when the request came over TLS.
    secure_cookies: bool = False
    #: Entries kept in the console's audit log (older ones are trimmed).
    audit_max: int = 10_000


#: The bind types an SMPP server account may be allowed (``smpp_server.accounts[].bind_types``).
SMPP_BIND_TYPES = ("transceiver", "transmitter", "receiver")
#: Where an SMPP server account's MOs go: its binds (as deliver_sm), or the flows (as any text).
SMPP_MO_TARGETS = ("binds", "flow")


@dataclass(frozen=True)
class SmppAccountConfig:
    """One ESME allowed to bind into Parley (docs/smpp.md#binding-into-parley-the-server-side)."""

    #: The bind's system_id.
    system_id: str
    #: An argon2 hash of its password (``parley smpp hash-password`` prints one).
    password_hash: str
    #: Which binds it may open: transceiver, transmitter, receiver.
    bind_types: list[str] = field(default_factory=lambda: list(SMPP_BIND_TYPES))
    #: The source addresses it may submit with (``*`` and ``?`` wildcards; empty: any).
    sources: list[str] = field(default_factory=list)
    #: Send its messages from the source address it submitted (true), or from the connector's
    #: ``sender`` (false).
    keep_source: bool = True
    #: Numbers (or short codes) it owns: texts to them are its MOs.
    numbers: list[str] = field(default_factory=list)
    #: Binds open at once, across every Parley process.
    max_binds: int = 4
    #: submit_sm (and data_sm, submit_multi destinations) per second, across every process;
    #: above it ESME_RTHROTTLED.
    throughput: float = 100.0
    #: Unanswered deliver_sm to one of its binds at most, and submits accepted from one bind
    #: and not yet answered (beyond it ESME_RMSGQFUL).
    window: int = 64
    #: Its MOs: ``binds`` (deliver_sm to its receiver/transceiver binds) or ``flow`` (the flows
    #: answer them, as any inbound text).
    mo: str = "binds"
    #: What data_coding 0 ("SMSC default alphabet") means in its submits: gsm0338 (unpacked),
    #: latin_1 or ascii.
    default_encoding: str = "gsm0338"
    #: Receipts and MOs waiting for a bind: at most this many (the oldest go first) ...
    queue_max: int = 100_000
    #: ... and none older than this.
    queue_age: Duration = Duration(3 * 86400.0)


@dataclass(frozen=True)
class SmppServerTlsConfig:
    #: PEM files: the server's certificate (chain) and key; empty: plain TCP.
    cert: str = ""
    key: str = ""
    #: PEM file of the CAs whose client certificates are required; empty: none asked for.
    client_ca: str = ""


@dataclass(frozen=True)
class SmppServerConfig:
    """ESMEs binding into Parley (gateways/smpp/server.py; role ``smpp-server``). Off while
    ``listen`` is empty."""

    #: host:port to listen on (``0.0.0.0:2775``); empty: no SMPP server.
    listen: str = ""
    tls: SmppServerTlsConfig = field(default_factory=SmppServerTlsConfig)
    #: The system_id Parley answers binds with.
    system_id: str = "Parley"
    accounts: list[SmppAccountConfig] = field(default_factory=list)
    #: An enquire_link is sent after this long without a PDU from the ESME ...
    enquire_link: Duration = Duration(30.0)
    #: ... and the connection is dropped when no answer (to it, or to a deliver_sm) comes in this long.
    response_timeout: Duration = Duration(10.0)
    #: A connection that has not bound after this long is closed.
    bind_timeout: Duration = Duration(30.0)
    #: A receipt or MO handed to a bind that went away without answering it (its process died) is
    #: offered again after this long.
    redeliver_after: Duration = Duration(60.0)
    #: Bind leases (the global bind count): renewed every third of this; a dead process's binds
    #: stop counting after it.
    bind_lease: Duration = Duration(30.0)
    #: Parts of a long message (UDH or SAR) wait this long for the others.
    parts_ttl: Duration = Duration(300.0)
    #: Longest PDU read (longer: generic_nack ESME_RINVCMDLEN, and the connection is closed).
    max_pdu: int = 65536


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    #: ``text`` for humans, ``json`` for log shippers.
    format: str = "text"


@dataclass(frozen=True)
class Config:
    redis: RedisConfig = field(default_factory=RedisConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    numbers: NumbersConfig = field(default_factory=NumbersConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    governance: GovernanceConfig = field(default_factory=GovernanceConfig)
    log: LogConfig = field(default_factory=LogConfig)
    crm: CrmConfig = field(default_factory=CrmConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    #: ESMEs binding into Parley (off while ``smpp_server.listen`` is empty).
    smpp_server: SmppServerConfig = field(default_factory=SmppServerConfig)
    #: name -> gateway settings; ``type`` picks the connector, the rest is the connector's own.
    gateways: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Which connectors send to which numbers, with failover (gateways/routing.py).
    routing: list[Any] = field(default_factory=list)


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    checks: Sequence[Callable[[Config], None]] = (),
) -> Config:
    """Read ``path`` (or ``$PARLEY_CONFIG``, or ``parley.yaml`` if present), apply env, validate.

    ``overrides`` is a nested dict merged over the file before the environment (used by the
    demo and the tests). ``checks`` are the cross-field rules owned by parts above the core (the
    send windows, each connector's options, the routes): the app hands them in
    (:func:`engine.app.settings.load_config`), so the core imports none of those parts.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    chosen = path or env.get("PARLEY_CONFIG")
    if chosen is None and Path(DEFAULT_CONFIG_FILE).exists():
        chosen = DEFAULT_CONFIG_FILE
    if chosen is not None:
        raw = _read_yaml(Path(chosen))
    if overrides:
        raw = _merge(raw, overrides)
    raw = _apply_env(raw, env)
    cfg: Config = build_section(Config, raw, "")
    _check(cfg)
    for check in checks:
        check(cfg)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (plain YAML lets the second
    silently win, so ``port: 80`` further up a file would be ignored without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key_node.value!r} appears twice", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(where, problem) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "the top level must be a mapping of sections")
    return data


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _leaves(cls: type, prefix: tuple[str, ...] = ()) -> dict[str, tuple[tuple[str, ...], Any]]:
    """Map each env var name to (path, type) for every scalar/list leaf of the schema."""
    out: dict[str, tuple[tuple[str, ...], Any]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = (*prefix, f.name)
        if dataclasses.is_dataclass(tp):
            out.update(_leaves(tp, path))  # type: ignore[arg-type]
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            continue  # a list of sections (crm.webhooks) is file-only
        elif typing.get_origin(tp) is not dict and typing.get_args(tp) != (Any,):  # file-only structures
            out[ENV_PREFIX + "_".join(path).upper()] = (path, tp)
    return out


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    leaves = _leaves(Config)
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_RESERVED:
            continue
        if name not in leaves:
            raise ConfigError(name, "unknown environment override (no such config key)")
        path, tp = leaves[name]
        parsed: Any = value
        if typing.get_origin(tp) is list:
            parsed = [p.strip() for p in value.split(",") if p.strip()]
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
            node[part] = child = dict(child)
            node = child
        node[path[-1]] = parsed
    return raw


def _int(value: Any) -> int:
    if isinstance(value, str) and _INT_RE.match(value):  # not isdigit(): "--5" and "²" pass it
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"expected a whole number, got {value!r}")


def _float(value: Any) -> float:
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):
            return float(value)
    raise ValueError(f"expected a number, got {value!r}")


def _bool(value: Any) -> bool:
    word = _BOOLS.get(value.lower()) if isinstance(value, str) else value
    if isinstance(word, bool):
        return word
    raise ValueError(f"expected true or false, got {value!r}")


def _str(value: Any) -> str:
    if value is None or isinstance(value, str):  # None: ``sender:`` with nothing after it
        return value or ""
    raise ValueError(f"expected a string, got {value!r}")


_BOOLS = {w: True for w in ("1", "true", "yes", "on")} | {w: False for w in ("0", "false", "no", "off")}
_SCALARS: dict[str, Callable[[Any], Any]] = {"int": _int, "float": _float, "bool": _bool, "str": _str}
_MESSAGES = {"missing": "missing required key", "list_type": "expected a list, got {0!r}"}


def _mapping(value: Any, known: list[str] | None = None) -> Any:
    """None (``gateways:`` left empty) is {}, keys are text; a section refuses keys not ``known``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("expected a mapping" if known is not None else f"expected a mapping, got {value!r}")
    if known is not None and (unknown := [k for k in value if str(k) not in known]):
        raise ValueError(f"unknown key (known: {', '.join(known)})", str(unknown[0]))
    return {str(k): v for k, v in value.items()}


def _house_rules(node: Any) -> Any:
    """``node`` (a pydantic core schema) with Parley's scalars, empty mappings and sections."""
    if isinstance(node, list):
        return [_house_rules(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: v if k in ("serialization", "metadata") else _house_rules(v) for k, v in node.items()}
    kind = node.get("type")  # not every mapping in a schema is a schema node
    if kind in _SCALARS:
        return core_schema.no_info_plain_validator_function(_SCALARS[kind])
    if kind == "dict":
        return core_schema.no_info_before_validator_function(_mapping, node)
    if kind == "dataclass":
        known = sorted(f.name for f in dataclasses.fields(node["cls"]))
        return core_schema.no_info_before_validator_function(functools.partial(_mapping, known=known), node)
    return node


#: One validator per dataclass, built on first use (tens of ms for Config, then reused).
_validator = functools.cache(lambda cls: SchemaValidator(_house_rules(TypeAdapter(cls).core_schema)))


def build_section(cls: type, data: object, prefix: str) -> Any:
    """Validate ``data`` against the dataclass ``cls`` (the config, each gateway's options): the
    first problem is a :class:`ConfigError` naming its key under ``prefix``."""
    try:
        return _validator(cls).validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
    path, problem = prefix, err.get("ctx", {}).get("error")  # ValueError(message, *keys below loc)
    for part in (*err["loc"], *(problem.args[1:] if problem else ())):
        path = f"{path}[{part}]" if isinstance(part, int) else f"{path}.{part}" if path else str(part)
    text = problem.args[0] if problem else _MESSAGES.get(err["type"], "{1}").format(err["input"], err["msg"])
    raise ConfigError(path or "(top level)", text) from None


def _check(cfg: Config) -> None:
    """Cross-field rules the types cannot express."""
    if not 0 <= cfg.http.port <= 65535:
        raise ConfigError("http.port", f"must be 0..65535, got {cfg.http.port}")
    if cfg.http.max_body_bytes < 1024:
        raise ConfigError("http.max_body_bytes", "must be at least 1024")
    if not 1 <= cfg.engine.shards <= 1024:
        raise ConfigError("engine.shards", f"must be 1..1024, got {cfg.engine.shards}")
    for i, cap in enumerate(cfg.governance.caps):
        try:
            parse_cap(cap)
        except ValueError as exc:
            raise ConfigError(f"governance.caps[{i}]", str(exc)) from None
    gov = cfg.governance
    try:
        ZoneInfo(gov.default_timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            "governance.default_timezone", f"unknown time zone {gov.default_timezone!r}"
        ) from None
    if gov.holidays:
        import holidays

        try:
            holidays.country_holidays(gov.holidays.upper())
        except NotImplementedError:
            raise ConfigError("governance.holidays", f"unknown country {gov.holidays!r}") from None
    for section in ("keywords", "messages"):
        for kind in getattr(cfg.governance, section):
            if kind not in ("opt_out", "opt_in", "help", "opt_out_marketing"):
                raise ConfigError(
                    f"governance.{section}.{kind}", "must be opt_out, opt_in, help or opt_out_marketing"
                )
    if not 1 <= cfg.engine.workers <= 64:
        raise ConfigError("engine.workers", f"must be 1..64, got {cfg.engine.workers}")
    if not 1 <= cfg.engine.api_processes <= 64:
        raise ConfigError("engine.api_processes", f"must be 1..64, got {cfg.engine.api_processes}")
    parse_roles(cfg.engine.role)
    if cfg.engine.unmatched not in UNMATCHED:
        raise ConfigError("engine.unmatched", f"must be ignore or inbox, got {cfg.engine.unmatched!r}")
    if cfg.engine.message_log_ttl < 60:
        raise ConfigError("engine.message_log_ttl", f"must be at least 1m, got {cfg.engine.message_log_ttl}s")
    if cfg.engine.dedupe_window < 60:
        raise ConfigError("engine.dedupe_window", f"must be at least 1m, got {cfg.engine.dedupe_window}s")
    if cfg.engine.inbound_rate <= 0:
        raise ConfigError("engine.inbound_rate", f"must be more than 0, got {cfg.engine.inbound_rate:g}")
    if cfg.engine.lease_ttl < 0.3:
        raise ConfigError("engine.lease_ttl", f"must be at least 300ms, got {cfg.engine.lease_ttl}s")
    if cfg.engine.batch_size < 1:
        raise ConfigError("engine.batch_size", "must be at least 1")
    if not 1 <= cfg.engine.max_segments <= 255:  # a concatenated SMS has at most 255 parts
        raise ConfigError("engine.max_segments", f"must be 1..255, got {cfg.engine.max_segments}")
    for key, low in (("max_flow_bytes", 1024), ("max_flow_depth", 8), ("max_flow_nodes", 1)):
        if getattr(cfg.engine, key) < low:
            raise ConfigError(f"engine.{key}", f"must be at least {low}")
    if cfg.redis.max_connections < 2:
        raise ConfigError("redis.max_connections", "must be at least 2")
    _check_redis_durability(cfg.redis)
    _check_cluster(cfg.redis)
    if cfg.log.level.lower() not in {"debug", "info", "warning", "error"}:
        raise ConfigError("log.level", f"must be debug, info, warning or error, got {cfg.log.level!r}")
    if cfg.log.format not in {"text", "json"}:
        raise ConfigError("log.format", f"must be text or json, got {cfg.log.format!r}")
    import phonenumbers

    if cfg.numbers.default_region.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError("numbers.default_region", f"unknown region {cfg.numbers.default_region!r}")
    if cfg.governance.erasure_key and len(cfg.governance.erasure_key) < 16:
        raise ConfigError("governance.erasure_key", "too short: use at least 16 characters")
    for i, key in enumerate(cfg.api.keys):
        if len(key) < 16:
            raise ConfigError(f"api.keys[{i}]", "too short: use at least 16 characters")
    for i, hook in enumerate(cfg.crm.webhooks):
        _check_webhook(hook, f"crm.webhooks[{i}]")
    _check_console(cfg.console)
    _check_smpp_server(cfg.smpp_server)
    if cfg.engine.default_gateway and cfg.engine.default_gateway not in cfg.gateways:
        raise ConfigError(
            "engine.default_gateway",
            f"names {cfg.engine.default_gateway!r}, which is not in gateways",
        )


_ARGON2_HASH = re.compile(r"^\$argon2(id|i|d)\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$")


def _check_console(c: ConsoleConfig) -> None:
    seen: set[str] = set()
    for i, user in enumerate(c.users):
        key = f"console.users[{i}]"
        if not re.fullmatch(r"[A-Za-z0-9._@-]{1,64}", user.name):
            raise ConfigError(f"{key}.name", "1-64 letters, digits or . _ @ -")
        if user.name in seen:
            raise ConfigError(f"{key}.name", f"{user.name!r} is listed twice")
        seen.add(user.name)
        if user.role not in CONSOLE_ROLES:
            raise ConfigError(f"{key}.role", f"must be {', '.join(CONSOLE_ROLES)}; got {user.role!r}")
        if not _ARGON2_HASH.match(user.password_hash):
            raise ConfigError(
                f"{key}.password_hash", "not an argon2 hash (make one with: parley console hash-password)"
            )
    if c.session_idle_timeout < 60:
        raise ConfigError("console.session_idle_timeout", "must be at least 1m")
    if c.lockout_attempts < 1:
        raise ConfigError("console.lockout_attempts", "must be at least 1")
    if c.lockout_window < 1:
        raise ConfigError("console.lockout_window", "must be at least 1s")
    if c.audit_max < 100:
        raise ConfigError("console.audit_max", "must be at least 100")


def _check_smpp_server(c: SmppServerConfig) -> None:
    if c.listen:
        host, _, port = c.listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError("smpp_server.listen", f"expected host:port, got {c.listen!r}")
    if bool(c.tls.cert) != bool(c.tls.key):
        raise ConfigError("smpp_server.tls", "give both cert and key (PEM files), or neither")
    if c.tls.client_ca and not c.tls.cert:
        raise ConfigError("smpp_server.tls.client_ca", "needs tls.cert and tls.key")
    for key in ("enquire_link", "response_timeout", "bind_timeout", "redeliver_after", "bind_lease"):
        if getattr(c, key) <= 0:
            raise ConfigError(f"smpp_server.{key}", "must be more than 0")
    if c.redeliver_after <= c.response_timeout:
        raise ConfigError("smpp_server.redeliver_after", "must be longer than response_timeout")
    if c.max_pdu < 1024:
        raise ConfigError("smpp_server.max_pdu", "must be at least 1024")
    seen: set[str] = set()
    owners: dict[str, str] = {}
    for i, a in enumerate(c.accounts):
        key = f"smpp_server.accounts[{i}]"
        if not 1 <= len(a.system_id) <= 15 or not a.system_id.isprintable():
            raise ConfigError(f"{key}.system_id", "1-15 printable characters (SMPP 3.4)")
        if a.system_id in seen:
            raise ConfigError(f"{key}.system_id", f"{a.system_id!r} is listed twice")
        seen.add(a.system_id)
        if not _ARGON2_HASH.match(a.password_hash):
            raise ConfigError(
                f"{key}.password_hash", "not an argon2 hash (make one with: parley smpp hash-password)"
            )
        for j, kind in enumerate(a.bind_types):
            if kind not in SMPP_BIND_TYPES:
                raise ConfigError(
                    f"{key}.bind_types[{j}]", f"must be {', '.join(SMPP_BIND_TYPES)}; got {kind!r}"
                )
        if a.default_encoding not in ("gsm0338", "latin_1", "ascii"):
            raise ConfigError(
                f"{key}.default_encoding", f"must be gsm0338, latin_1 or ascii; got {a.default_encoding!r}"
            )
        if a.mo not in SMPP_MO_TARGETS:
            raise ConfigError(f"{key}.mo", f"must be binds or flow; got {a.mo!r}")
        for j, number in enumerate(a.numbers):
            bare = number.removeprefix("+")
            if bare in owners:
                raise ConfigError(f"{key}.numbers[{j}]", f"{number!r} is already account {owners[bare]!r}'s")
            owners[bare] = a.system_id
        for name, low in (("max_binds", 1), ("window", 1), ("queue_max", 10)):
            if getattr(a, name) < low:
                raise ConfigError(f"{key}.{name}", f"must be at least {low}")
        if a.throughput <= 0:
            raise ConfigError(f"{key}.throughput", "must be more than 0")
        if a.queue_age < 60:
            raise ConfigError(f"{key}.queue_age", "must be at least 1m")


def _check_redis_durability(r: RedisConfig) -> None:
    """``wait_replicas``/``wait_timeout`` and the Sentinel keys."""
    if not 0 <= r.wait_replicas <= 16:
        raise ConfigError("redis.wait_replicas", f"must be 0..16, got {r.wait_replicas}")
    if not 0.001 <= r.wait_timeout <= 60:  # WAIT with 0 would wait for ever
        raise ConfigError("redis.wait_timeout", f"must be 1ms..60s, got {r.wait_timeout:g}s")
    for i, addr in enumerate(r.sentinels):
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"redis.sentinels[{i}]", f"expected host:port, got {addr!r}")
    if r.sentinels and not r.sentinel_master:
        raise ConfigError("redis.sentinel_master", "required with redis.sentinels (the monitored name)")
    if r.sentinel_master and not r.sentinels:
        raise ConfigError("redis.sentinels", "required with redis.sentinel_master (host:port of each)")
    if r.sentinels and not r.url:
        raise ConfigError(
            "redis.url",
            "required with redis.sentinels: it gives the database and credentials (redis://:pw@x/0)",
        )


def _check_cluster(cfg: RedisConfig) -> None:
    if cfg.nodes and not cfg.cluster:
        raise ConfigError("redis.nodes", "seed nodes are for a cluster: set redis.cluster: true")
    if cfg.cluster and not cfg.url:
        raise ConfigError("redis.url", "a cluster needs the address of one of its nodes (redis://host:port)")
    for i, node in enumerate(cfg.nodes):
        host, _, port = node.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"redis.nodes[{i}]", f"expected host:port, got {node!r}")


def _check_webhook(hook: WebhookConfig, key: str) -> None:
    from urllib.parse import urlsplit

    url = urlsplit(hook.url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"{key}.url", f"expected an http:// or https:// URL, got {hook.url!r}")
    if len(hook.secret) < 16:
        raise ConfigError(f"{key}.secret", "too short: use at least 16 characters")
    for j, kind in enumerate(hook.events):
        if kind not in WEBHOOK_EVENTS:
            raise ConfigError(
                f"{key}.events[{j}]", f"unknown event type {kind!r} (known: {', '.join(WEBHOOK_EVENTS)})"
            )
    if not hook.events:
        raise ConfigError(f"{key}.events", "subscribe to at least one event type")
    if hook.timeout <= 0:
        raise ConfigError(f"{key}.timeout", "must be more than 0")
    if hook.max_attempts < 1:
        raise ConfigError(f"{key}.max_attempts", "must be at least 1")
    if hook.backoff <= 0 or hook.backoff_max < hook.backoff:
        raise ConfigError(f"{key}.backoff", "must be more than 0 and at most backoff_max")
    if not 1 <= hook.batch <= 1000:
        raise ConfigError(f"{key}.batch", f"must be 1..1000, got {hook.batch}")
