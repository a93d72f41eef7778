"""Every route the app serves, in one table: ``build_app`` adds them to the router and
``/v1/openapi.json`` describes them from their handlers' declared operations (engine/api/schema.py),
so a route cannot be served undescribed, nor described unserved."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from engine.api import (
    campaigns,
    consent,
    contacts,
    conversations,
    flows,
    inbound,
    inbox,
    listing,
    messages,
    openapi,
    ops,
    results,
    segments,
    starts,
    webhooks,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ROUTES: list[tuple[str, str, Handler]] = [
    ("PUT", "/v1/contacts/{number}", contacts.put_contact),
    ("GET", "/v1/contacts/{number}", contacts.get_contact),
    ("DELETE", "/v1/contacts/{number}", contacts.delete_contact),
    ("POST", "/v1/contacts:import", contacts.post_import),
    ("GET", "/v1/contacts", listing.list_contacts),
    ("GET", "/v1/contacts:export", listing.export_contacts),
    ("GET", "/v1/flows", listing.list_flows),
    ("GET", "/v1/starts", listing.list_starts),
    ("GET", "/v1/segments", segments.list_segments),
    ("PUT", "/v1/segments/{name}", segments.put_segment),
    ("GET", "/v1/segments/{name}", segments.get_segment),
    ("DELETE", "/v1/segments/{name}", segments.delete_segment),
    ("GET", "/v1/contacts/{number}/consent", consent.get_consent),
    ("PUT", "/v1/contacts/{number}/consent", consent.put_consent),
    ("PUT", "/v1/suppressions/{number}", consent.put_suppression),
    ("DELETE", "/v1/suppressions/{number}", consent.delete_suppression),
    ("POST", "/v1/flows:reload", flows.reload_flows),
    ("POST", "/v1/flows/{flow}/start", flows.start_flow),
    ("GET", "/v1/flows/{flow}/results", results.get_results),
    ("GET", "/v1/flows/{flow}/report", results.get_report),
    ("GET", "/v1/starts/{id}", starts.get_start),
    ("GET", "/v1/campaigns", campaigns.list_campaigns),
    ("GET", "/v1/campaigns/{name}", campaigns.get_campaign),
    ("PUT", "/v1/campaigns/{name}", campaigns.put_campaign),
    ("DELETE", "/v1/campaigns/{name}", campaigns.delete_campaign),
    ("POST", "/v1/contacts/{number}/events", starts.post_contact_event),
    ("POST", "/v1/inbound/{gateway}", inbound.post_inbound),
    ("POST", "/v1/receipts/{gateway}", inbound.post_receipts),
    ("GET", "/v1/conversations/{number}", conversations.get_conversation),
    ("GET", "/v1/messages", conversations.get_messages),
    ("GET", "/v1/inbox", inbox.list_inbox),
    # Not ":claim", ":close", ":return": those are the POST routes' (a GET of them is a 405).
    ("GET", "/v1/inbox/{number:[^/:]+}", inbox.get_inbox_contact),
    ("POST", "/v1/inbox/{number}:claim", inbox.claim_inbox_contact),
    ("POST", "/v1/inbox/{number}/replies", inbox.reply_inbox_contact),
    ("POST", "/v1/inbox/{number}:close", inbox.close_inbox_contact),
    ("POST", "/v1/inbox/{number}:return", inbox.return_inbox_contact),
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
