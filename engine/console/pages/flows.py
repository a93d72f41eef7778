"""The Flows pages: the list (``/console/flows``), one flow's graph and simulator
(``/console/flows/{flow}``) and the simulator's actions (``POST /console/flows/{flow}/simulator``).

Everyone who may log in may read them and use the simulator: it changes nothing real (no
contact, no message, no report: engine/console/simulator.py), and every use is in the audit
log. The counts on the graph (contacts waiting per node, drop-off per node) are read when the
page is asked for and shared for a few seconds (engine/console/flow_counts.py).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from engine.console import graph, simulator
from engine.console.audit import audit
from engine.console.auth import user
from engine.console.flow_counts import FlowCounts
from engine.console.flow_list import FlowList
from engine.console.render import render, url
from engine.console.web import services, state
from engine.core.contacts import validate_fields
from engine.core.errors import Unprocessable
from engine.flows import Flow

#: The longest text a simulated customer may send (an SMS conversation, not a document).
MAX_TEXT = 1600
#: The longest CRM answer one may type for a simulated call.
MAX_ANSWER = 20_000


def _counts(request: web.Request) -> FlowCounts:
    extra = state(request).extra
    held = extra.get("flows.counts")
    if not isinstance(held, FlowCounts):
        rt = services(request)
        held = extra["flows.counts"] = FlowCounts(rt.store, rt.config.engine.shards, rt.clock)
    return held


def _list(request: web.Request) -> FlowList:
    extra = state(request).extra
    held = extra.get("flows.list")
    if not isinstance(held, FlowList):
        held = extra["flows.list"] = FlowList()
    return held


def _flow(request: web.Request) -> Flow:
    """The flow the path names (a given ``?version=DIGEST`` that this process knows), or 404."""
    name = request.match_info["flow"]
    flows = services(request).flows
    current = flows.get(name)
    if current is None:
        raise web.HTTPNotFound(reason=f"no flow {name!r} is loaded")
    digest = request.query.get("version")
    if digest and digest != current.digest:
        older = flows.versions.get((name, digest))
        if older is None:
            raise web.HTTPNotFound(reason=f"flow {name!r} has no version {digest!r} in this process")
        return older
    return current


async def list_page(request: web.Request) -> web.Response:
    """Every flow with its versions and validation status, and contacts waiting in it now."""
    rt = services(request)
    rows = await _list(request).rows(rt.config.engine.flows_dir, rt.flows)
    waiting = await _counts(request).waiting()
    totals = {name: sum(c.values()) for name, c in waiting.counts.items()}
    return await render(request, "flows.html", page="flows", rows=rows, totals=totals, waiting=waiting)


async def flow_page(request: web.Request, *, error: str = "", status: int = 200) -> web.Response:
    """One flow: its graph with the counts, its versions, and the simulator."""
    rt = services(request)
    flow = _flow(request)
    counts = _counts(request)
    waiting = await counts.waiting()
    report = await counts.report(flow.name)
    dropped = {row["node"]: row["runs"] for row in report["drop_off"]}
    sim = await simulator.load(rt.store, user(request).name, flow.name)
    current = rt.flows.get(flow.name)
    versions = [
        (f.version, d, current is not None and d == current.digest)
        for (n, d), f in reversed(rt.flows.versions.items())
        if n == flow.name
    ]
    pending = sim.pending_timer(rt.flows) if sim is not None else None
    waits_on_call = False
    if sim is not None and sim.waiting_at is not None:
        on = rt.flows.for_state(sim.state)
        node = on.nodes.get(sim.waiting_at) if on is not None else None
        waits_on_call = node is not None and node.call is not None
    # The simulation's node is outlined on the graph while it is on this flow's shown version.
    here = sim.waiting_at if sim is not None and sim.state.get("fh") == flow.digest else None
    return await render(
        request, "flow.html", status=status, page="flows", flow=flow, versions=versions,
        drawing=graph.svg(flow, waiting.of(flow.name) if flow is current else {}, dropped, current=here),
        waiting=waiting, waiting_here=sum(waiting.of(flow.name).values()), report=report, sim=sim,
        pending=_pending_view(sim, pending), waits_on_call=waits_on_call, error=error,
        fields_text=_fields_text(flow, sim), simulator_number=simulator.NUMBER, is_current=flow is current,
        expires=graph.duration(flow.expire_after),
    )  # fmt: skip


def _pending_view(sim: simulator.Simulation | None, pending: tuple[str, str, int] | None) -> str:
    """What the fire button says: which timer, at which node, how far off."""
    if sim is None or pending is None:
        return ""
    kind, token, due = pending
    node = token.partition("@")[0] if kind in ("w", "c") else ""
    what = _PENDING.get(kind, kind)
    return f"{what}{f' at {node}' if node else ''}, due in {graph.duration(max(0, due - sim.now_ms) / 1000)}"


#: What the fire button says of the pending timer.
_PENDING = {"w": "no reply in time", "x": "the conversation expires", "c": "the CRM call gets no answer"}


def _fields_text(flow: Flow, sim: simulator.Simulation | None) -> str:
    """The start form's fields: the last simulation's, else the flow's required ones, empty."""
    if sim is not None:
        return "\n".join(
            f"{k}={v if isinstance(v, str) else orjson.dumps(v).decode()}" for k, v in sim.fields.items()
        )
    return "\n".join(f"{name}=" for name in flow.fields)


def parse_fields(text: str) -> dict[str, Any]:
    """``name=value`` lines (a JSON value, such as a number or a list, is read as such)."""
    out: dict[str, Any] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, eq, value = line.partition("=")
        if not eq:
            raise Unprocessable("fields", f"line {n}: write name=value, got {line[:60]!r}")
        value = value.strip()
        try:
            out[name.strip()] = orjson.loads(value) if value[:1] in '[{0123456789-tfn"' and value else value
        except orjson.JSONDecodeError:
            out[name.strip()] = value
    return validate_fields(out)


async def simulate(request: web.Request) -> web.StreamResponse:
    """One simulator action (``do``: start, say, fire, answer, fail, reset), then back to the page."""
    rt = services(request)
    flow = _flow(request)
    me = user(request)
    form = await request.post()
    do = str(form.get("do", ""))
    sim = await simulator.load(rt.store, me.name, flow.name)
    try:
        if do == "start":
            fields = parse_fields(str(form.get("fields", "")))
            sim = simulator.new(
                flow, rt.clock.now_ms(), fields, language=str(form.get("language", "")).strip(),
                timezone=str(form.get("timezone", "")).strip(),
                marketing_opt_in=form.get("marketing") == "on",
            )  # fmt: skip
            sim.begin(rt)
            await audit(request, "simulator.start", flow=flow.name, fields=len(fields))
        elif do == "reset":
            await simulator.forget(rt.store, me.name, flow.name)
            await audit(request, "simulator.reset", flow=flow.name)
            sim = None
        elif sim is None:
            raise Unprocessable("do", "start a simulation first (it may have been idle for over an hour)")
        elif do == "say":
            text = str(form.get("text", ""))
            if not text.strip() or len(text) > MAX_TEXT:
                raise Unprocessable("text", f"say something (at most {MAX_TEXT} characters)")
            sim.say(rt, text)
            await audit(request, "simulator.say", flow=flow.name, chars=len(text))
        elif do == "fire":
            sim.fire(rt)
            await audit(request, "simulator.fire", flow=flow.name)
        elif do in ("answer", "fail"):
            answer = _answer(str(form.get("answer", "") or "{}"))
            sim.answer_call(rt, do == "answer", answer if do == "answer" else {"error": "failed (simulated)"})
            await audit(request, "simulator.crm", flow=flow.name, ok=do == "answer")
        else:
            raise Unprocessable("do", "must be start, say, fire, answer, fail or reset")
    except (Unprocessable, simulator.SimulatorError) as exc:
        message = exc.message if isinstance(exc, Unprocessable) else str(exc)
        return await flow_page(request, error=message, status=422)
    if sim is not None:
        await simulator.save(rt.store, me.name, sim)
    suffix = f"?version={request.query['version']}" if "version" in request.query else ""
    raise web.HTTPSeeOther(url(f"/flows/{flow.name}{suffix}#simulator"))


def _answer(text: str) -> Any:
    if len(text) > MAX_ANSWER:
        raise Unprocessable("answer", f"at most {MAX_ANSWER} characters")
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise Unprocessable("answer", f"the CRM's answer must be JSON: {exc}") from None
