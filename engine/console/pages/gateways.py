"""The Gateways page: each connector's settings (secrets hidden: engine/console/settings_view.py
says which), binds, rate on the wire, backlog, circuit, receipts and recent send errors."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engine.console import live
from engine.console.render import render
from engine.console.settings_view import SECRET_WORDS, settings
from engine.console.web import services, state
from gateways import recent_errors

#: Recent errors shown per connector.
ERRORS_SHOWN = 20


async def connectors(request: web.Request) -> list[dict[str, Any]]:
    """What the page shows of each connector."""
    rt = services(request)
    sampler = state(request).sampler
    figures = {g["name"]: g for g in (await live.overview(rt, sampler))["gateways"]}
    sample = sampler.samples[-1]
    out = []
    for name, gw in rt.gateways.items():
        raw = rt.config.gateways.get(name, {})
        out.append({
            **figures[name],
            "settings": settings(raw, gw.config, gw.policy),
            "health": gw.health(),
            "receipts": sorted(
                ((k.split("|")[0], k.split("|")[1], round(v)) for k, v in _pairs(sample, name).items()),
                key=lambda row: (row[0], row[1]),
            ),
            "outcomes": {k: round(v) for k, v in sorted(
                live.by_label(sample, "parley_outbound_messages_total", "outcome", gateway=name).items())},
            "attempts": {k: round(v) for k, v in sorted(
                live.by_label(sample, "parley_outbound_total", "status", gateway=name).items())},
            "errors": await recent_errors.recent(rt.store, name, ERRORS_SHOWN),
        })  # fmt: skip
    return out


def _pairs(sample: live.Sample, gateway: str) -> dict[str, float]:
    """Receipts of ``gateway`` by "status|result"."""
    out: dict[str, float] = {}
    for (n, labels), v in sample.values.items():
        d = dict(labels)
        if n == "parley_receipts_total" and d.get("gateway") == gateway:
            key = f"{d.get('status', '')}|{d.get('result', '')}"
            out[key] = out.get(key, 0.0) + v
    return out


async def page(request: web.Request) -> web.Response:
    """Every connector, one section each (``#gw-NAME``)."""
    rows = await connectors(request)
    return await render(request, "gateways.html", page="gateways", gateways=rows, secret_words=SECRET_WORDS)
