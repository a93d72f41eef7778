"""Every console route, in one table: ``(method, path under /console, handler, least role)``.

The least role is checked before the handler runs (engine/console/auth.py ``guard``), with the
CSRF token of every POST; ``None`` opens a route to everyone (the login form). Paths under
``/api/`` are JSON (errors too); the rest are pages. Each page family adds its rows here.
"""

from __future__ import annotations

from engine.console import masking
from engine.console.auth import Handler
from engine.console.pages import (
    audit_log,
    conversations,
    flows,
    gateways,
    inbox,
    journeys,
    login,
    overview,
    reports,
)

ROUTES: list[tuple[str, str, Handler, str | None]] = [
    ("GET", "/login", login.get_login, None),
    ("POST", "/login", login.post_login, None),
    ("POST", "/logout", login.post_logout, "viewer"),
    ("GET", "/", overview.page, "viewer"),
    ("GET", "/api/overview", overview.data, "viewer"),
    ("GET", "/gateways", gateways.page, "viewer"),
    ("POST", "/api/unmask", masking.post_unmask, "operator"),
    ("GET", "/audit", audit_log.page, "admin"),
    ("GET", "/api/audit", audit_log.data, "admin"),
    ("GET", "/conversations", conversations.page, "viewer"),
    ("GET", "/conversations/{key}", conversations.contact_page, "viewer"),
    ("GET", "/api/conversations/tail", conversations.tail_data, "viewer"),
    ("GET", "/api/conversations/{key}/transcript", conversations.transcript_rows, "viewer"),
    ("GET", "/inbox", inbox.page, "viewer"),
    ("GET", "/inbox/{key}", inbox.contact_page, "viewer"),
    ("POST", "/inbox/{key}/claim", inbox.post_claim, "operator"),
    ("POST", "/inbox/{key}/reply", inbox.post_reply, "operator"),
    ("POST", "/inbox/{key}/close", inbox.post_close, "operator"),
    ("POST", "/inbox/{key}/return", inbox.post_return, "operator"),
    ("GET", "/flows", flows.list_page, "viewer"),
    ("GET", "/flows/{flow}", flows.flow_page, "viewer"),
    ("POST", "/flows/{flow}/simulator", flows.simulate, "viewer"),
    ("GET", "/journeys", journeys.page, "viewer"),
    ("GET", "/journeys/{id}", journeys.start_page, "viewer"),
    ("POST", "/journeys/{id}/cancel", journeys.post_cancel, "operator"),
    ("GET", "/reports", reports.index, "viewer"),
    ("GET", "/reports/{flow}", reports.page, "viewer"),
    ("GET", "/reports/{flow}/report.json", reports.report_json, "viewer"),
    ("GET", "/reports/{flow}/report.csv", reports.report_csv, "viewer"),
    ("GET", "/reports/{flow}/results.{format:csv|jsonl}", reports.results, "operator"),
]
