"""The connectors Parley ships, by ``type`` name. Adding one is one line here."""

from __future__ import annotations

from typing import Any

from engine.config import build_section
from engine.errors import ConfigError
from gateways.base import Gateway
from gateways.console import ConsoleGateway
from gateways.http_generic import HttpGenericGateway

GATEWAY_TYPES: dict[str, type[Gateway]] = {
    "http": HttpGenericGateway,
    "console": ConsoleGateway,
}


def validate_gateway_config(name: str, raw: dict[str, Any]) -> Any:
    """Check one ``gateways.NAME`` section; returns the connector's config object."""
    if not isinstance(raw, dict):
        raise ConfigError(f"gateways.{name}", "expected a mapping with a type")
    kind = raw.get("type")
    if kind not in GATEWAY_TYPES:
        known = ", ".join(sorted(GATEWAY_TYPES))
        raise ConfigError(f"gateways.{name}.type", f"must be one of {known}, got {kind!r}")
    options = {k: v for k, v in raw.items() if k != "type"}
    return build_section(GATEWAY_TYPES[kind].Config, options, f"gateways.{name}")


def build_gateway(name: str, raw: dict[str, Any]) -> Gateway:
    cls = GATEWAY_TYPES[raw["type"]]
    return cls(name, validate_gateway_config(name, raw))
