"""The connectors Parley ships, by ``type`` name. Adding one is one line here."""

from __future__ import annotations

from typing import Any

from engine.core.config import Config, build_section
from engine.core.errors import ConfigError
from gateways.base import POLICY_KEYS, Gateway, SendPolicy
from gateways.console import ConsoleGateway
from gateways.http_generic import HttpGenericGateway
from gateways.jasmin import JasminGateway
from gateways.routing import parse_rules
from gateways.smpp.gateway import SmppGateway
from gateways.twilio import TwilioGateway

GATEWAY_TYPES: dict[str, type[Gateway]] = {
    "http": HttpGenericGateway,
    "console": ConsoleGateway,
    "twilio": TwilioGateway,
    "jasmin": JasminGateway,
    "smpp": SmppGateway,
}


def validate_gateway_config(name: str, raw: dict[str, Any]) -> tuple[Any, SendPolicy]:
    """Check one ``gateways.NAME`` section; returns the connector's config and its send policy."""
    if not isinstance(raw, dict):
        raise ConfigError(f"gateways.{name}", "expected a mapping with a type")
    kind = raw.get("type")
    if kind not in GATEWAY_TYPES:
        known = ", ".join(sorted(GATEWAY_TYPES))
        raise ConfigError(f"gateways.{name}.type", f"must be one of {known}, got {kind!r}")
    cls = GATEWAY_TYPES[kind]
    options = {k: v for k, v in raw.items() if k != "type" and k not in POLICY_KEYS}
    policy_raw = {k: v for k, v in raw.items() if k in POLICY_KEYS}
    config = build_section(cls.Config, options, f"gateways.{name}")
    policy: SendPolicy = build_section(SendPolicy, policy_raw, f"gateways.{name}")
    _check_policy(name, policy)
    cls.check(name, config)
    return config, policy


def _check_policy(name: str, p: SendPolicy) -> None:
    for key in ("concurrency", "max_attempts", "circuit_failures", "bulk_prefetch"):
        if getattr(p, key) < 1:
            raise ConfigError(f"gateways.{name}.{key}", f"must be at least 1, got {getattr(p, key)}")
    if p.rate < 0:
        raise ConfigError(f"gateways.{name}.rate", f"must be 0 (no limit) or more, got {p.rate:g}")
    for key in ("max_age", "probe_timeout"):
        if getattr(p, key) <= 0:
            raise ConfigError(f"gateways.{name}.{key}", "must be more than 0")
    if not 60 <= p.receipt_window <= 30 * 86400:
        raise ConfigError(
            f"gateways.{name}.receipt_window", f"must be between 1m and 30d, got {p.receipt_window:g}s"
        )


def longest_send_timeout(gateways: dict[str, dict[str, Any]]) -> float:
    """The longest any configured connector waits for its provider's answer (seconds; 0 with
    none), for the send latency buckets (engine/core/metrics.py)."""
    return max(
        (GATEWAY_TYPES[raw["type"]].send_timeout(validate_gateway_config(name, raw)[0])
         for name, raw in gateways.items()),
        default=0.0,
    )  # fmt: skip


def build_gateway(name: str, raw: dict[str, Any]) -> Gateway:
    cls = GATEWAY_TYPES[raw["type"]]
    config, policy = validate_gateway_config(name, raw)
    return cls(name, config, policy)


def check_config(cfg: Config) -> None:
    """The connectors' part of the configuration check, run by
    :func:`engine.app.settings.load_config`: each gateway's options by its connector class, and
    the routes against the connectors that can send."""
    for name, gw in cfg.gateways.items():
        validate_gateway_config(name, gw)
    parse_rules(cfg.routing, {n for n, gw in cfg.gateways.items() if GATEWAY_TYPES[gw["type"]].can_send})
