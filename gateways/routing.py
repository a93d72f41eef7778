"""Which connector sends a message, and where it fails over to.

``routing`` in the config is an ordered list of rules; the first whose ``match`` fits decides
the route, a list of connectors: the first sends, the others take over in order while it is
down (its circuit is open). A rule without ``match`` fits everything (put it last)::

    routing:
      - match: {country: [GB, IE]}
        via: [smpp_uk, twilio]
      - match: {flow: appointment_reminder}
        via: [twilio]
      - match: {prefix: "+1"}
        via: [twilio, jasmin]
      - via: [jasmin]

Match keys (each a value or a list; all given keys must fit): ``prefix`` of the E.164 number,
``country`` (ISO 3166 alpha-2, from the number), ``flow`` (the flow that sends), ``sender`` (our
number or short code the customer wrote to, for replies). A reply goes back through the
connector its text came in on (same number, same provider) with the matching rule's connectors
as its failover. Without any rule, ``engine.default_gateway`` (or the only sending connector).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import phonenumbers

from engine.core.errors import ConfigError

MATCH_KEYS = ("prefix", "country", "flow", "sender")


@dataclass(frozen=True)
class Rule:
    match: dict[str, frozenset[str]]
    via: tuple[str, ...]

    def fits(self, contact: str, flow: str, sender: str) -> bool:
        for key, values in self.match.items():
            if key == "prefix" and not any(contact.startswith(p) for p in values):
                return False
            if key == "country" and _country(contact) not in values:
                return False
            if key == "flow" and flow not in values:
                return False
            if key == "sender" and sender not in values:
                return False
        return True


@functools.lru_cache(maxsize=65536)
def _country(number: str) -> str:
    """The number's country; for a number no carrier has been given yet (a drama or test range)
    the main country of its calling code (+44 -> GB)."""
    try:
        parsed = phonenumbers.parse(number)
    except phonenumbers.NumberParseException:
        return ""
    region = phonenumbers.region_code_for_number(parsed)
    if not region:
        region = phonenumbers.region_code_for_country_code(parsed.country_code or 0)
    return "" if region == "ZZ" else region


def parse_rules(raw: list[Any], senders: set[str]) -> list[Rule]:
    """Validate ``routing`` (ConfigError names the rule and key); ``senders`` are the connectors
    that can send."""
    rules = []
    for i, item in enumerate(raw):
        where = f"routing[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(where, "expected a mapping with via (and optionally match)")
        unknown = sorted(set(item) - {"match", "via"})
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}", "unknown key (allowed: match, via)")
        via = item.get("via")
        if isinstance(via, str):
            via = [via]
        if not isinstance(via, list) or not via or not all(isinstance(v, str) for v in via):
            raise ConfigError(f"{where}.via", "expected a list of gateway names")
        for j, name in enumerate(via):
            if name not in senders:
                known = ", ".join(sorted(senders)) or "none"
                raise ConfigError(f"{where}.via[{j}]", f"{name!r} is not a gateway that can send ({known})")
        if len(set(via)) != len(via):
            raise ConfigError(f"{where}.via", "names a gateway twice")
        match_raw = item.get("match") or {}
        if not isinstance(match_raw, dict):
            raise ConfigError(f"{where}.match", "expected a mapping")
        match: dict[str, frozenset[str]] = {}
        for key, value in match_raw.items():
            if key not in MATCH_KEYS:
                raise ConfigError(f"{where}.match.{key}", f"unknown key (allowed: {', '.join(MATCH_KEYS)})")
            values = value if isinstance(value, list) else [value]
            if not values or not all(isinstance(v, str | int) and str(v) for v in values):
                raise ConfigError(f"{where}.match.{key}", "expected a value or a list of values")
            items = [str(v) for v in values]
            if key == "prefix" and not all(v.startswith("+") and v[1:].isdigit() for v in items):
                raise ConfigError(f"{where}.match.prefix", "expected E.164 prefixes like +44 or +1212")
            if key == "country":
                items = [v.upper() for v in items]
                bad = [v for v in items if phonenumbers.country_code_for_region(v) == 0]
                if bad:
                    raise ConfigError(f"{where}.match.country", f"unknown country {bad[0]!r}")
            match[key] = frozenset(items)
        rules.append(Rule(match, tuple(via)))
    return rules


class Router:
    def __init__(self, rules: list[Rule], senders: list[str], default: str) -> None:
        self.rules = rules
        self.senders = senders
        self.default = default or (senders[0] if len(senders) == 1 else "")

    def route(self, contact: str, *, flow: str = "", inbound: str = "", sender: str = "") -> list[str]:
        """The connectors for one message, in order (empty: nothing can send it)."""
        chosen: list[str] = []
        for rule in self.rules:
            if rule.fits(contact, flow, sender):
                chosen = list(rule.via)
                break
        else:
            if self.default:
                chosen = [self.default]
        if inbound in self.senders:
            return [inbound, *(g for g in chosen if g != inbound)]
        return chosen
