"""The audit log, for admins: a page and its JSON (``/console/audit``, ``/console/api/audit``)."""

from __future__ import annotations

from aiohttp import web

from engine.console import audit
from engine.console.render import render
from engine.console.web import services

PAGE = 100
_COMMON = ("at", "action", "user", "role", "ip", "id")


async def _rows(request: web.Request) -> tuple[list[dict[str, str]], str]:
    before = request.query.get("before", "+")
    if before != "+" and not all(c.isdigit() or c == "-" for c in before):
        before = "+"
    rows = await audit.read(services(request).store, count=PAGE, before=before)
    more = rows[-1]["id"] if len(rows) == PAGE else ""
    return rows, more


async def page(request: web.Request) -> web.Response:
    """The newest entries first, a page of 100, with a link to older ones."""
    rows, more = await _rows(request)
    for row in rows:
        row["details"] = " ".join(f"{k}={v}" for k, v in row.items() if k not in _COMMON)
    keep = services(request).config.console.audit_max
    return await render(request, "audit.html", page="audit", rows=rows, more=more, keep=keep)


async def data(request: web.Request) -> web.Response:
    """``{"entries": [...], "next_before": id or null}`` (``?before=ID`` pages back)."""
    rows, more = await _rows(request)
    return web.json_response({"entries": rows, "next_before": more or None})
