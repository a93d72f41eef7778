"""Console sessions, held in Redis (``p:cs:H``, engine/core/keys.py).

The cookie carries a random token; Redis holds the session under the token's SHA-256, so a copy
of the database opens no session. A session records its user, its CSRF token and when it was
last used: one unused for ``console.session_idle_timeout`` (by the engine's clock, so tests move
a fake one) is over. Redis expires the key after the same time of real time, so sessions left
behind clean themselves up. Logging out deletes the key: the cookie opens nothing afterwards,
even if someone kept a copy.

The "last used" time is written back at most every twentieth of the idle timeout (one GET per
console request, a SET now and then), not on every request.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import orjson

from engine.core import keys
from engine.core.clock import Clock
from engine.core.store import Store


@dataclass(frozen=True)
class Session:
    """A logged-in user's session (never holds the cookie token itself)."""

    user: str
    csrf: str
    created_ms: int
    seen_ms: int
    key: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    """Create, read (and keep alive) and drop console sessions."""

    def __init__(self, store: Store, clock: Clock, idle_s: float) -> None:
        self.store, self.clock = store, clock
        self.idle_ms = int(idle_s * 1000)

    async def create(self, user: str) -> tuple[str, Session]:
        """A new session for ``user``: (the cookie token, the session)."""
        token = secrets.token_urlsafe(32)
        now = self.clock.now_ms()
        session = Session(user, secrets.token_urlsafe(24), now, now, keys.console_session(_digest(token)))
        await self._write(session)
        return token, session

    async def get(self, token: str) -> Session | None:
        """The session of a cookie token, or None (unknown, logged out, or idle too long)."""
        if not token or len(token) > 128:
            return None
        key = keys.console_session(_digest(token))
        raw = await self.store.redis.get(key)
        if raw is None:
            return None
        d = orjson.loads(raw)
        now = self.clock.now_ms()
        if now - int(d["s"]) > self.idle_ms:
            await self.store.redis.delete(key)
            return None
        session = Session(d["u"], d["c"], int(d["at"]), int(d["s"]), key)
        if now - session.seen_ms > self.idle_ms // 20:
            session = Session(session.user, session.csrf, session.created_ms, now, key)
            await self._write(session)
        return session

    async def drop(self, session: Session) -> None:
        """Log out: the session's key is gone, so its cookie opens nothing any more."""
        await self.store.redis.delete(session.key)

    async def _write(self, s: Session) -> None:
        body = orjson.dumps({"u": s.user, "c": s.csrf, "at": s.created_ms, "s": s.seen_ms})
        await self.store.redis.set(s.key, body, px=self.idle_ms)
