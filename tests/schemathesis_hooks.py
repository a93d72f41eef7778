"""Schemathesis hooks for tests/test_schemathesis.py: how to send an NDJSON body (the import's),
which schemathesis has no serializer for. The generated value is a string, sent as it is."""

from __future__ import annotations

import json
from typing import Any

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx: Any, value: Any) -> bytes | None:
    if value is None:  # a case without a body
        return None
    if isinstance(value, bytes):
        return value
    # A string is the file; anything else (a wrong-typed body of a negative case) goes as JSON.
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()
