"""Packing commands for Redis, and reading a pipeline's replies, with less Python.

redis-py's hiredis packer (``HiredisRespSerializer.pack``) scans every argument twice in Python
(a memoryview check, then an encoder call each) before handing them to ``hiredis.pack_command``,
which takes str, bytes, int and float itself. A turn's commit is one EVALSHA of about sixty
arguments: 24 µs to pack the redis-py way, 3 µs handed to hiredis directly (measured on the
2-core VM with timeit, docs/BENCHMARKS.md). The connection classes here pack that way and fall
back to redis-py's own packing for anything hiredis refuses (a bool or a bytearray: redis-py
then raises its usual DataError, or converts), so what goes on the wire is the same bytes.

The strings are encoded as UTF-8 (hiredis' rule), which is the encoding the store's clients use.

Reading: redis-py reads each reply of a pipeline under its own timeout context (asyncio's
``timeout``, entered and left per reply: half of the time a worker spent reading replies at
3,000 turns/s, py-spy). A reply that hiredis already holds whole needs no wait, so no timeout:
:meth:`read_response` hands such a reply over directly, with redis-py's own checks (an error
reply raises as redis-py raises it, a lost connection is dropped), and leaves every other read
(nothing buffered yet, a push message, an explicit timeout) to redis-py. The first reply of a
pipeline waits as before; the rest mostly arrived with it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
from redis._parsers import hiredis as _hiredis_parsers
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError, ResponseError

#: What hiredis' reader answers when it holds no whole reply (redis-py's marker; older: False).
_NOT_ENOUGH: object = getattr(_hiredis_parsers, "NOT_ENOUGH_DATA", False)
_ASYNC_HIREDIS: Any = getattr(_hiredis_parsers, "_AsyncHiredisParser", None)


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

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        parser: Any = self._parser  # type: ignore[attr-defined]
        if (
            timeout is None
            and not push_request
            and _ASYNC_HIREDIS is not None
            and type(parser) is _ASYNC_HIREDIS
            and parser._connected
        ):
            try:
                got = parser._reader.gets(False) if disable_decoding else parser._reader.gets()
            except Exception:  # a protocol error: the bytes left cannot be trusted (as redis-py)
                await self.disconnect(nowait=True)  # type: ignore[attr-defined]
                raise
            if got is not _NOT_ENOUGH:
                push = getattr(parser, "_hiredis_PushNotificationType", None)
                if push is not None and isinstance(got, push):
                    await parser.handle_push_response(got)  # as redis-py's loop does; then read on
                else:
                    return self._reply(got)
        return await super().read_response(  # type: ignore[misc]
            disable_decoding, timeout, disconnect_on_error=disconnect_on_error, push_request=push_request
        )

    def _reply(self, got: Any) -> Any:
        """What redis-py's read_response makes of a reply the parser returned."""
        if isinstance(got, ConnectionError):
            raise got
        if isinstance(got, list) and got and isinstance(got[0], ConnectionError):
            raise got[0]
        if self.health_check_interval:  # type: ignore[attr-defined]
            self.next_health_check = asyncio.get_running_loop().time() + self.health_check_interval  # type: ignore[attr-defined]
        if isinstance(got, ResponseError):
            raise got
        return got


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
