"""Every route the app serves, in one table: ``build_app`` adds them to the router and
``/v1/openapi.json`` describes them from their handlers' declared operations (engine/api/schema.py),
so a route cannot be served undescribed, nor described unserved."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from engine.api import (
    consent,
    contacts,
    conversations,
    flows,
    inbound,
    messages,
    openapi,
    ops,
    results,
    starts,
    webhooks,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ROUTES: list[tuple[str, str, Handler]] = [
    ("PUT", "/v1/contacts/{number}", contacts.put_contact),
    ("GET", "/v1/contacts/{number}", contacts.get_contact),
    ("DELETE", "/v1/contacts/{number}", contacts.delete_contact),
    ("POST", "/v1/contacts:import", contacts.post_import),
    ("GET", "/v1/contacts/{number}/consent", consent.get_consent),
    ("PUT", "/v1/contacts/{number}/consent", consent.put_consent),
    ("PUT", "/v1/suppressions/{number}", consent.put_suppression),
    ("DELETE", "/v1/suppressions/{number}", consent.delete_suppression),
    ("POST", "/v1/flows:reload", flows.reload_flows),
    ("POST", "/v1/flows/{flow}/start", flows.start_flow),
    ("GET", "/v1/flows/{flow}/results", results.get_results),
    ("GET", "/v1/flows/{flow}/report", results.get_report),
    ("GET", "/v1/starts/{id}", starts.get_start),
    ("POST", "/v1/contacts/{number}/events", starts.post_contact_event),
    ("POST", "/v1/inbound/{gateway}", inbound.post_inbound),
    ("POST", "/v1/receipts/{gateway}", inbound.post_receipts),
    ("GET", "/v1/conversations/{number}", conversations.get_conversation),
    ("GET", "/v1/messages", conversations.get_messages),
    ("POST", "/v1/messages", messages.post_message),
    ("POST", "/v1/messages:batch", messages.post_batch),
    ("GET", "/v1/messages/{id}", messages.get_message),
    ("DELETE", "/v1/messages/{id}", messages.delete_message),
    ("DELETE", "/v1/starts/{id}", starts.cancel_start),
    ("GET", "/v1/webhooks/dead", webhooks.get_dead),
    ("POST", "/v1/webhooks/dead:replay", webhooks.post_replay),
    ("GET", "/v1/openapi.json", openapi.get_openapi),
    ("GET", "/healthz", ops.healthz),
    ("GET", "/metrics", ops.metrics),
]


def spec() -> dict[str, Any]:
    """``/v1/openapi.json`` as the app serves it (a fresh dict each call)."""
    return openapi.describe(ROUTES)
