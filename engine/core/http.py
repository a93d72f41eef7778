"""HTTP conventions shared by the connectors and the outcome webhooks: reading ``Retry-After``
and Parley's webhook signature. In the core so that both sides use one definition without the
engine importing the connectors."""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import time


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date), capped at 1 h."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), 3600.0)


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """Parley's webhook signature: ``sha256=`` hex HMAC-SHA256 of ``"{timestamp}." + body``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()
