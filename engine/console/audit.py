"""The console's audit log: every console action (logins good and failed, lockouts, logouts,
unmasks, and the pages' own: inbox replies, cancels, returns to flow, simulator use) appended to
one Redis stream (``p:caudit``, trimmed to about ``console.audit_max`` entries) and logged.

    await audit(request, "inbox.reply", number=digest, chars=len(text))

Fields are stored as text. Keep phone numbers out of them (name a contact by
``engine.core.keys.number_digest`` or its masked form): an erased contact leaves no number here.
Admins read the log on ``/console/audit`` (and ``/console/api/audit``).
"""

from __future__ import annotations

import logging
from typing import Any, cast

from aiohttp import web

from engine.console.auth import maybe_user
from engine.console.web import services, state
from engine.core import keys
from engine.core.store import Store

log = logging.getLogger(__name__)


async def audit(request: web.Request, action: str, *, user: str | None = None, **fields: Any) -> None:
    """Append ``action`` by the request's user (or ``user``, for a login) to the audit log."""
    me = maybe_user(request)
    who = user if user is not None else (me.name if me else "")
    role = me.role if me and user is None else ""
    if not role and who in state(request).users:
        role = state(request).users[who].role
    rt = services(request)
    entry: dict[Any, Any] = {"at": str(rt.clock.now_ms()), "action": action, "user": who, "role": role,
             "ip": request.remote or ""}  # fmt: skip
    entry.update({k: str(v) for k, v in fields.items()})
    await rt.store.redis.xadd(
        keys.console_audit(), entry, maxlen=rt.config.console.audit_max, approximate=True
    )
    extra = " ".join(f"{k}={v}" for k, v in fields.items())
    log.info("console %s user=%s role=%s ip=%s %s", action, who or "-", role or "-", entry["ip"], extra)


async def read(store: Store, *, count: int = 100, before: str = "+") -> list[dict[str, str]]:
    """The newest ``count`` entries (before entry id ``before``, exclusive when given), newest first."""
    end = f"({before}" if before != "+" else "+"
    rows = cast(
        list[tuple[bytes, dict[bytes, bytes]]],
        await store.redis.xrevrange(keys.console_audit(), max=end, min="-", count=count),
    )
    out = []
    for entry_id, fields in rows:
        row = {k.decode(): v.decode() for k, v in fields.items()}
        row["id"] = entry_id.decode()
        out.append(row)
    return out
