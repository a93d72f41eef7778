"""Reports (``/console/reports``): per flow, the report of ``GET /v1/flows/{flow}/report``
(engine/crm/reports.py) drawn: the rates, each NPS result's 0-10 distribution, the drop-off as
a funnel, the experiments' arms against the holdout with their 95% intervals; and downloads.

Downloads: the report as JSON (exactly the API's) or CSV (one ``name,value`` row per number),
and the results (one row per run) as CSV or JSONL, streamed by the API's own export. The results
name every contact's number, so they are for operators and admins (who may see numbers), and
each download of them is audited; viewers get the report only.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson
from aiohttp import web

from engine.api.results import stream_results
from engine.console import charts, report_view
from engine.console.audit import audit
from engine.console.ports import ConsoleServices
from engine.console.render import render
from engine.console.web import services
from engine.core.errors import NotFound
from engine.crm import reports


def _flow(rt: ConsoleServices, request: web.Request) -> str:
    name = request.match_info["flow"]
    if rt.flows.get(name) is None:
        raise NotFound(f"no flow {name!r}", code="flow_not_found")
    return name


async def _report(rt: ConsoleServices, flow: str) -> dict[str, Any]:
    return reports.report(flow, await reports.fold(rt.store, rt.config.engine.shards, flow))


async def index(request: web.Request) -> web.Response:
    """The flows, each a link to its report."""
    rt = services(request)
    flows = [rt.flows.flows[n] for n in sorted(rt.flows.flows)]
    return await render(request, "reports.html", page="reports", flows=flows)


async def page(request: web.Request) -> web.Response:
    """One flow's report, drawn, with its numbers as text beside every chart."""
    rt = services(request)
    flow = _flow(rt, request)
    report = await _report(rt, flow)
    nps = [
        {"name": name, "r": r,
         "chart": charts.bar_chart(report_view.nps_bars(r), title=f"{name}: runs per score, 0 to 10")}
        for name, r in report["nps"].items()
    ]  # fmt: skip
    steps = report_view.funnel_steps(report, rt.flows.get(flow))
    experiments = []
    for xp, data in report["experiments"].items():
        arms, marks = report_view.experiment_arms(data)
        chart = (
            charts.error_bars(marks, title=f"{xp}: lift over the holdout, with 95% intervals")
            if marks
            else None
        )
        experiments.append({"name": xp, "arms": arms, "chart": chart})
    return await render(
        request, "report.html", page="reports", flow=flow, report=report,
        rates=report_view.rates(report), nps=nps, steps=steps,
        funnel=charts.funnel(steps, title=f"{flow}: runs still going after each node where some were lost"),
        experiments=experiments,
    )  # fmt: skip


async def report_json(request: web.Request) -> web.Response:
    """The report as the API answers it, as a file."""
    rt = services(request)
    flow = _flow(rt, request)
    return web.Response(
        body=orjson.dumps(await _report(rt, flow), option=orjson.OPT_INDENT_2),
        content_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{flow}-report.json"'},
    )


async def report_csv(request: web.Request) -> web.Response:
    """The report as ``name,value`` rows (``runs.started,10``, ``nps.nps_score.score,25.0``)."""
    rt = services(request)
    flow = _flow(rt, request)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "value"])
    for name, value in report_view.flatten(await _report(rt, flow)):
        writer.writerow([name, "" if value is None else value])
    return web.Response(
        text=buf.getvalue(),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{flow}-report.csv"'},
    )


async def results(request: web.Request) -> web.StreamResponse:
    """The flow's results (``/results.csv``, ``/results.jsonl``): the API's export; audited."""
    rt = services(request)
    flow = _flow(rt, request)
    fmt = request.match_info["format"]
    await audit(request, "results.download", flow=flow, format=fmt)
    return await stream_results(request, rt, flow, fmt)
