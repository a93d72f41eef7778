"""``GET /v1/flows/{flow}/results`` (CSV or JSONL, one row per run) and ``/report`` (JSON)."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, Field

from engine.api.common import iso, json_response, runtime
from engine.api.ports import ApiServices
from engine.api.schema import FLOW, Answer, Operation, Query, operation, read_query
from engine.core.errors import NotFound
from engine.crm import reports

ROWS_PER_WRITE = 500
STRING = {"type": "string"}


class ResultsQuery(Query):
    format: Annotated[Literal["csv", "jsonl"], Field(description="csv (default) or jsonl")] = "csv"

    MESSAGES = {"format": "must be csv or jsonl"}


class Runs(BaseModel):
    started: int
    completed: int
    expired: int
    unanswered: int
    in_progress: int
    outcomes: dict[str, int]


class DropOff(BaseModel):
    node: str
    runs: int


class Report(BaseModel):
    """A flow's report (engine/crm/reports.py)."""

    flow: str
    runs: Runs
    response_rate: float | None
    opt_out_rate: float | None
    median_time_to_reply_s: float | None
    messages: dict[str, Any]
    governance_messages: dict[str, Any]
    nps: Annotated[
        dict[str, Any],
        Field(
            description="per result name: respondents, promoters, passives, detractors, score, "
            "distribution (runs per whole score 0-10)"
        ),
    ]
    experiments: Annotated[dict[str, Any], Field(description="per experiment: its arms against the holdout")]
    drop_off: list[DropOff]


ERR = (401, 422, 503)


def _flow(request: web.Request) -> str:
    rt = runtime(request)
    name = request.match_info["flow"]
    if rt.flows.get(name) is None:
        raise NotFound(f"no flow {name!r}", code="flow_not_found")
    return name


@operation(Operation(
    "get_flow_report", "results",
    "Runs, completion, response, opt-out and delivery rates, time to reply, NPS, drop-off",
    {200: Answer("the report", Report)}, errors=(404, *ERR), params=(FLOW,),
))  # fmt: skip
async def get_report(request: web.Request) -> web.Response:
    """Counts, rates, NPS and drop-off of the flow's runs (docs/api.md#results-and-reports)."""
    rt = runtime(request)
    flow = _flow(request)
    return json_response(reports.report(flow, await reports.fold(rt.store, rt.config.engine.shards, flow)))


@operation(Operation(
    "get_flow_results", "results", "One row per run of the flow, streamed",
    {200: Answer("the runs", STRING, "text/csv", more={"application/x-ndjson": STRING})},
    errors=(404, *ERR), params=(FLOW,), query=ResultsQuery,
))  # fmt: skip
async def get_results(request: web.Request) -> web.StreamResponse:
    """One row per run, oldest first, streamed: ``?format=csv`` (default) or ``jsonl``."""
    rt = runtime(request)
    flow = _flow(request)
    return await stream_results(request, rt, flow, read_query(request, ResultsQuery, rt).format)


async def stream_results(request: web.Request, rt: ApiServices, flow: str, fmt: str) -> web.StreamResponse:
    """The results export of ``flow`` (``csv`` or ``jsonl``) streamed as the answer to
    ``request`` (also the console's download)."""
    folded = await reports.fold(rt.store, rt.config.engine.shards, flow)
    runs = sorted(folded.runs.values(), key=lambda r: (r.started_at, r.contact))
    names = reports.result_names(runs)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson",
            "Content-Disposition": f'attachment; filename="{flow}-results.{fmt}"',
        }
    )
    await resp.prepare(request)
    header = [
        "contact",
        "started_at",
        "ended_at",
        "outcome",
        "completed",
        "replies",
        "first_reply_s",
        "opted_out",
    ]
    header += [c for n in names for c in (n, f"{n}_category")]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if fmt == "csv":
        writer.writerow(header)
    for i, run in enumerate(runs, 1):
        r = reports.row(run, names)
        r["started_at"], r["ended_at"] = iso(r["started_at"]), iso(r["ended_at"])
        if fmt == "jsonl":
            buf.write(orjson.dumps(r).decode() + "\n")
        else:
            res: dict[str, Any] = r.pop("results")
            cells = [*r.values()] + [x for n in names for x in _cells(res.get(n))]
            writer.writerow(["" if c is None else c for c in cells])
        if i % ROWS_PER_WRITE == 0:
            await resp.write(buf.getvalue().encode())
            buf.seek(0)
            buf.truncate()
    await resp.write(buf.getvalue().encode())
    await resp.write_eof()
    return resp


def _cells(result: dict[str, Any] | None) -> tuple[Any, Any]:
    if result is None:
        return None, None
    value = result["value"]
    if isinstance(value, dict | list):
        value = orjson.dumps(value).decode()
    return value, result["category"]
