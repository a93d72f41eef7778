"""Packing commands for Redis with less Python per argument.

redis-py's hiredis packer (``HiredisRespSerializer.pack``) scans every argument twice in Python
(a memoryview check, then an encoder call each) before handing them to ``hiredis.pack_command``,
which takes str, bytes, int and float itself. A turn's commit is one EVALSHA of about sixty
arguments: 24 µs to pack the redis-py way, 3 µs handed to hiredis directly (measured on the
2-core VM with timeit, docs/BENCHMARKS.md). The connection classes here pack that way and fall
back to redis-py's own packing for anything hiredis refuses (a bool or a bytearray: redis-py
then raises its usual DataError, or converts), so what goes on the wire is the same bytes.

The strings are encoded as UTF-8 (hiredis' rule), which is the encoding the store's clients use.
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection


class _LeanPacking:
    """Mixin over a redis-py asyncio connection: :meth:`pack_command` through hiredis directly."""

    def pack_command(self, *args: Any) -> list[bytes]:
        head = args[0]
        # As redis-py: a command name with spaces ("CLIENT SETNAME") is several arguments.
        if isinstance(head, str):
            if " " in head:
                args = (*head.split(), *args[1:])
        elif isinstance(head, bytes) and b" " in head:
            args = (*head.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            packed: list[bytes] = super().pack_command(*args)  # type: ignore[misc]
            return packed


class LeanConnection(_LeanPacking, Connection):
    """A TCP connection packing through hiredis directly."""


class LeanSSLConnection(_LeanPacking, SSLConnection):
    """A TLS connection packing through hiredis directly."""


class LeanUnixConnection(_LeanPacking, UnixDomainSocketConnection):
    """A Unix socket connection packing through hiredis directly."""


def lean(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """The lean-packing counterpart of redis-py's ``connection_class`` (itself when none)."""
    for plain, fast in (
        (SSLConnection, LeanSSLConnection),
        (UnixDomainSocketConnection, LeanUnixConnection),
        (Connection, LeanConnection),
    ):
        if connection_class is plain:
            return fast
    return connection_class
