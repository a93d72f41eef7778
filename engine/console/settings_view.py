"""A connector's settings as the console shows them, secrets hidden.

Hidden (shown as ``•••••• (set)`` or ``(not set)``, never their value):

- every setting whose name contains one of :data:`SECRET_WORDS` (``password``,
  ``webhook_secret``, ``auth_token``, ``authorization``, an ``api_key``...), at any depth (the
  generic HTTP connector's ``body`` template and ``headers`` included);
- every header of ``headers`` whose name contains one of those words (``Authorization``,
  ``X-Api-Key``, ``Cookie``...);
- a password written in a URL (``https://user:pw@host``) and URL query parameters named so.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

SECRET_WORDS = ("password", "secret", "token", "auth", "key", "signature", "credential", "cookie", "pass")
DOTS = "\u2022" * 6
HIDDEN = f"{DOTS} (set)"
NOT_SET = "(not set)"


def is_secret(name: str) -> bool:
    """Whether a setting (or header, or query parameter) of this name is treated as a secret."""
    low = name.lower()
    return any(word in low for word in SECRET_WORDS)


def hide_url(url: str) -> str:
    """``url`` without a password in it (user info, or a query parameter named like a secret)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return HIDDEN
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", f":{DOTS}@", 1)
    query = parts.query
    if query:
        query = "&".join(
            f"{quote(k)}={DOTS if is_secret(k) else quote(v)}"
            for k, v in parse_qsl(query, keep_blank_values=True)
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def shown(name: str, value: Any) -> Any:
    """``value`` of setting ``name`` as shown: secrets hidden, mappings and lists gone through."""
    if is_secret(name) and not isinstance(value, dict):
        return HIDDEN if value not in ("", None, [], {}) else NOT_SET
    if isinstance(value, dict):
        return {str(k): shown(str(k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [shown(name, v) for v in value]
    if isinstance(value, str) and "://" in value:
        return hide_url(value)
    return value


def settings(raw: dict[str, Any], parsed: Any = None, policy: Any = None) -> list[tuple[str, Any, bool]]:
    """``(name, value shown, secret?)`` for a connector: its options as parsed (defaults filled
    in) or as written, then the send pipeline's policy; ``type`` first."""
    rows: list[tuple[str, Any, bool]] = [("type", raw.get("type", ""), False)]
    values: dict[str, Any] = {}
    if parsed is not None and dataclasses.is_dataclass(parsed):
        values.update({f.name: getattr(parsed, f.name) for f in dataclasses.fields(parsed)})
    else:
        values.update({k: v for k, v in raw.items() if k != "type"})
    if policy is not None and dataclasses.is_dataclass(policy):
        values.update({f.name: getattr(policy, f.name) for f in dataclasses.fields(policy)})
    for name, value in values.items():
        rows.append((name, shown(name, value), is_secret(name)))
    return rows
