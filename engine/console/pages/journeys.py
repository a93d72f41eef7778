"""Journeys and campaigns (``/console/journeys``): the journey starts with their progress, a
start's page with the cancel button (operators), and the campaigns with their next fires.

A start's progress comes from the same functions as ``GET /v1/starts`` and ``/v1/starts/{id}``
(engine/api/starts.py, one pass over the outcome streams for a whole page of starts), and the
cancel is the one ``DELETE /v1/starts/{id}`` runs, audited. Nothing here is polled: a page costs
its reads when someone opens it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engine.api import starts
from engine.console import charts
from engine.console.audit import audit
from engine.console.charts import Bar
from engine.console.journeys_view import LOOKAHEAD, Progress, next_fires, progress
from engine.console.render import render, url
from engine.console.web import services
from engine.crm import campaigns as crm_campaigns
from engine.crm import starts_index

#: Starts on one page of the list.
PAGE = 25


def progress_bar(p: Progress, title: str, width: float = 320) -> Any:
    """The start's deliveries as one stacked bar (``width``: narrower in the list's rows)."""
    return charts.stacked_bar(
        [Bar("sent", p.sent, "good"), Bar("skipped", p.skipped, "warn"),
         Bar("cancelled", p.cancelled, "bad"), Bar("waiting", p.waiting, "muted")],
        title=title, width=width,
    )  # fmt: skip


async def page(request: web.Request) -> web.Response:
    """The starts, newest first (``?flow=``, ``?status=``, ``?after=`` a page on), and the
    campaigns with each event's next fire."""
    rt = services(request)
    flow = request.query.get("flow") or None
    status = request.query.get("status") or None
    if status not in (None, *starts_index.STATUSES):
        status = None
    after = request.query.get("after") or None
    found, last = await starts_index.page(rt.store, flow=flow, status=status, limit=PAGE, after=after)
    turns = await starts.start_turns(rt, {s["start"]: s["flow"] for s in found}) if found else {}
    rows = []
    for s in found:
        p = progress(s, turns[s["start"]])
        rows.append({**s, "p": p, "bar": progress_bar(p, f"Progress of {s['start']}", width=140)})
    now = rt.clock.now_ms()
    fires = await next_fires(rt.store, rt.config.engine.shards, now)
    camps = []
    for name, camp in sorted(rt.campaigns.campaigns.items()):
        done = await crm_campaigns.backfill_status(rt, name)
        events = []
        for ev in camp.events:
            fire = fires.get(f"{name}:{ev.id}")
            events.append({"ev": ev.as_json(), "fire": fire})
        camps.append({"camp": camp.as_json(), "events": events, "backfill": done})
    return await render(
        request, "journeys.html", page="journeys", rows=rows, more=last, flow=flow or "",
        status_filter=status or "", statuses=starts_index.STATUSES, flows=sorted(rt.flows.flows),
        campaigns=camps, lookahead=LOOKAHEAD,
    )  # fmt: skip


async def start_page(request: web.Request) -> web.Response:
    """One start: its counts at request time, its progress, and (operators) the cancel button."""
    rt = services(request)
    sid = request.match_info["id"]
    view = await starts.start_view(rt, sid)
    p = progress(view, view["turns"])
    result = {k: request.query[k] for k in ("cancelled", "too_late") if k in request.query}
    return await render(
        request, "journey.html", page="journeys", s=view, p=p,
        bar=progress_bar(p, f"Progress of {sid}"), result=result,
    )  # fmt: skip


async def post_cancel(request: web.Request) -> web.StreamResponse:
    """Cancel the start (what ``DELETE /v1/starts/{id}`` does), audit it, and show its page."""
    rt = services(request)
    sid = request.match_info["id"]
    done = await starts.cancel(rt, sid)
    await audit(request, "start.cancel", start=sid, cancelled=done["cancelled"], too_late=done["too_late"])
    raise web.HTTPSeeOther(
        url(f"/journeys/{sid}") + f"?cancelled={done['cancelled']}&too_late={done['too_late']}"
    )
