"""Passwords: argon2id hashes (argon2-cffi, RFC 9106's low-memory profile by default), for the
console's users and the SMPP server's accounts.

``parley console hash-password`` prints :func:`hash_password`'s output for the configuration.
Verifying takes tens of milliseconds of CPU on purpose, so it runs off the event loop; a login
with an unknown name verifies against a dummy hash, so the answer takes as long as for a known
name with a wrong password (response time does not tell which names exist).
"""

from __future__ import annotations

import asyncio
import functools

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_HASHER = PasswordHasher()


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` (salted; a new one each call)."""
    return _HASHER.hash(password)


@functools.cache
def _dummy() -> str:
    return _HASHER.hash("parley: no such user")


def _verify(hashed: str | None, password: str) -> bool:
    try:
        return _HASHER.verify(hashed or _dummy(), password) and hashed is not None
    except (VerificationError, InvalidHashError):
        return False


async def verify_password(hashed: str | None, password: str) -> bool:
    """Whether ``password`` matches ``hashed`` (None: an unknown user; always False)."""
    return await asyncio.to_thread(_verify, hashed, password)
