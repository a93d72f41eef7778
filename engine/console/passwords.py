"""Console passwords: the argon2 helpers live in engine/core/passwords.py (the SMPP server's
accounts use them too); the console imports them from here as before."""

from __future__ import annotations

from engine.core.passwords import hash_password, verify_password

__all__ = ["hash_password", "verify_password"]
