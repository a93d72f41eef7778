"""``/v1/campaigns``: flows started relative to a date in each contact's record (docs/campaigns.md).

The definition is the same as a campaign file's (engine/flows/campaigns.py reads both), so a
campaign may be moved between a file and the API unchanged. Files win: a name defined in a file
is read-only here (409)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from engine.api.common import json_response, runtime
from engine.api.schema import OMITTED, Answer, Model, Operation, Param, operation, read_body
from engine.core.errors import NotFound, Unprocessable
from engine.crm import campaigns
from engine.flows.campaigns import AT_RE, FIELD_RE, NAME_RE, OFFSET_RE, Campaign

NAME = Param(
    "name", "the campaign's name (a-z, 0-9, _ and -)", {"type": "string", "pattern": NAME_RE.pattern}
)


#: With ``at``, the offset is in whole days or weeks (what engine/flows/campaigns.py checks).
DAYS = "^([+-]?)(\\d{1,6})\\s*(d|w)$"


class EventIn(Model):
    """One event: start ``flow`` relative to the date in contact field ``field``."""

    model_config = ConfigDict(
        json_schema_extra={"dependentSchemas": {"at": {"properties": {"offset": {"pattern": DAYS}}}}}
    )

    id: Annotated[str, Field(pattern=NAME_RE.pattern, description="default: the flow's name")] = OMITTED
    flow: Annotated[str, Field(min_length=1, description="a loaded flow")]
    field: Annotated[str, Field(pattern=FIELD_RE.pattern, description="the contact field holding the date")]
    offset: Annotated[
        str,
        Field(pattern=OFFSET_RE.pattern, description="signed m, h, d or w; whole days with at",
              examples=["-24h", "3d"]),
    ] = "0d"  # fmt: skip
    at: Annotated[
        str,
        Field(
            pattern=AT_RE.pattern, description="local time of day in the contact's zone", examples=["09:00"]
        ),
    ] = OMITTED
    every: Literal["month", "year"] = OMITTED
    interrupt: Annotated[
        bool, Field(description="start even in another conversation (it ends interrupted)")
    ] = False


class CampaignIn(Model):
    """``PUT /v1/campaigns/{name}``: the campaign's events (they replace the old ones)."""

    description: str = ""
    events: Annotated[list[EventIn], Field(min_length=1, max_length=20)]

    MESSAGES = {
        "events": "must be a list of 1 to 20 events",
        "events[].flow": "must name the flow to start",
        "events[].field": "must name a contact field (letters, digits, _)",
        "events[].offset": "must be a signed amount of m, h, d or w, like -24h or 3d",
        "events[].at": 'must be a local time of day like "09:00"',
        "events[].every": "must be month or year",
        "events[].id": "must be a name: lower-case letters, digits, _ and -",
        "events[].interrupt": "must be true or false",
    }


class EventView(BaseModel):
    id: str
    flow: str
    field: str
    offset: str
    at: str | None = None
    every: str | None = None
    interrupt: bool = False


class Backfill(BaseModel):
    """The last pass that scheduled existing contacts for this definition."""

    digest: str
    state: str = Field(description="running or done")
    scanned: int
    scheduled: int


class CampaignView(BaseModel):
    name: str
    description: str
    source: str = Field(description="file (read-only here) or api")
    digest: str
    events: list[EventView]
    backfill: Backfill | None = None


class CampaignList(BaseModel):
    campaigns: list[CampaignView]


ERR = (401, 422, 503)


async def _view(request: web.Request, camp: Campaign) -> dict[str, Any]:
    out = camp.as_json()
    done = await campaigns.backfill_status(runtime(request), camp.name)
    out["backfill"] = (
        {k: done[k] for k in ("digest", "state", "scanned", "scheduled") if k in done} if done else None
    )
    return out


async def _find(request: web.Request) -> Campaign:
    """The campaign named in the path; one defined by another API process in the last seconds
    (before this one read them again) is read from Redis now."""
    rt = runtime(request)
    name = request.match_info["name"]
    camp = rt.campaigns.get(name) or (await rt.campaign_keeper.refresh()).get(name)
    if camp is None:
        raise NotFound(f"no campaign {name!r}", code="campaign_not_found")
    return camp


@operation(Operation(
    "list_campaigns", "campaigns", "The campaigns in force, from files and from the API",
    {200: Answer("the campaigns", CampaignList)}, errors=(401, 503),
))  # fmt: skip
async def list_campaigns(request: web.Request) -> web.Response:
    rt = runtime(request)
    return json_response(
        {"campaigns": [await _view(request, c) for _, c in sorted(rt.campaigns.campaigns.items())]}
    )


@operation(Operation(
    "get_campaign", "campaigns", "A campaign, and how far its backfill over the contacts went",
    {200: Answer("the campaign", CampaignView)}, errors=(404, 401, 503), params=(NAME,),
))  # fmt: skip
async def get_campaign(request: web.Request) -> web.Response:
    return json_response(await _view(request, await _find(request)))


@operation(Operation(
    "put_campaign", "campaigns",
    "Define or replace a campaign; existing contacts are scheduled by a backfill in the background",
    {200: Answer("replaced", CampaignView), 201: Answer("created", CampaignView)},
    errors=(400, 404, 409, *ERR), params=(NAME,), body=CampaignIn,
))  # fmt: skip
async def put_campaign(request: web.Request) -> web.Response:
    rt = runtime(request)
    name = request.match_info["name"]
    if not NAME_RE.match(name):
        raise Unprocessable("name", "must be a name: lower-case letters, digits, _ and -")
    body = await read_body(request, CampaignIn, rt)
    for i, ev in enumerate(body.events):
        if rt.flows.get(ev.flow) is None:
            raise NotFound(f"events[{i}].flow: no flow {ev.flow!r} is loaded", code="flow_not_found")
    camp = campaigns.from_body(name, body.model_dump(exclude_none=True), set(rt.flows.flows))
    created = await rt.campaign_keeper.put(camp)
    return json_response(await _view(request, rt.campaigns.get(name) or camp), 201 if created else 200)


@operation(Operation(
    "delete_campaign", "campaigns",
    "Delete a campaign: its pending fires start nothing (a file's campaign: remove the file)",
    {204: Answer("deleted")}, errors=(404, 409, 401, 503), params=(NAME,),
))  # fmt: skip
async def delete_campaign(request: web.Request) -> web.Response:
    await runtime(request).campaign_keeper.delete(request.match_info["name"])
    return web.Response(status=204)
