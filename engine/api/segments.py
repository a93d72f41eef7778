"""``PUT``, ``GET``, ``DELETE /v1/segments/{name}`` and ``GET /v1/segments``: saved segments, named
audiences that ``GET /v1/contacts``, its export and ``POST /v1/flows/{flow}/start`` take by name
(engine/crm/segments.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from engine.api.common import iso, json_response, runtime
from engine.api.contacts import Tags
from engine.api.flows import Condition
from engine.api.schema import Answer, Model, Operation, Param, operation, read_body
from engine.core.errors import NotFound
from engine.crm import segments

NAME = Param("name", "the segment's name", {"type": "string", "pattern": segments.NAME_RE.pattern})
ERR = (401, 422, 503)


class SegmentIn(Model):
    """``PUT /v1/segments/{name}``: who is in it (every given rule holds), decided when it is used."""

    where: Annotated[
        list[Condition], Field(max_length=50, description="conditions on contact fields; all must hold")
    ] = []
    tags: Tags = []
    consent: Literal["opted_in", "opted_out", "unknown"] | None = None

    MESSAGES = {
        "where": "must be a list of conditions like {field: contact.city, equals: Leeds}",
        "consent": "must be opted_in, opted_out or unknown",
    }


class SegmentView(BaseModel):
    name: str
    where: list[dict[str, Any]]
    tags: list[str]
    consent: str | None
    created_at: Annotated[str, Field(json_schema_extra={"format": "date-time"})]
    updated_at: Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class SegmentList(BaseModel):
    segments: list[SegmentView]


def _view(s: segments.Segment) -> dict[str, Any]:
    return {**s.as_json(), "created_at": iso(s.created_at), "updated_at": iso(s.updated_at)}


@operation(Operation(
    "put_segment", "segments", "Save a segment (a named audience), replacing one of its name",
    {200: Answer("replaced", SegmentView), 201: Answer("created", SegmentView)},
    errors=(400, *ERR), params=(NAME,), body=SegmentIn,
))  # fmt: skip
async def put_segment(request: web.Request) -> web.Response:
    rt = runtime(request)
    name = segments.check_name(request.match_info["name"])
    body = await read_body(request, SegmentIn, rt)
    where = tuple(c.model_dump() for c in body.where)
    seg = segments.Segment(name, where, tuple(body.tags), body.consent)
    stored, created = await segments.put(rt.store, seg, rt.clock.now_ms())
    return json_response(_view(stored), 201 if created else 200)


@operation(Operation(
    "get_segment", "segments", "Read a segment",
    {200: Answer("the segment", SegmentView)}, errors=(404, *ERR), params=(NAME,),
))  # fmt: skip
async def get_segment(request: web.Request) -> web.Response:
    rt = runtime(request)
    name = segments.check_name(request.match_info["name"])
    seg = await segments.get(rt.store, name)
    if seg is None:
        raise NotFound(f"no segment {name!r}", code="segment_not_found")
    return json_response(_view(seg))


@operation(Operation(
    "delete_segment", "segments", "Delete a segment",
    {204: Answer("deleted")}, errors=(404, *ERR), params=(NAME,),
))  # fmt: skip
async def delete_segment(request: web.Request) -> web.Response:
    rt = runtime(request)
    await segments.delete(rt.store, segments.check_name(request.match_info["name"]))
    return web.Response(status=204)


@operation(Operation(
    "list_segments", "segments", "Every segment, by name",
    {200: Answer("the segments", SegmentList)}, errors=ERR,
))  # fmt: skip
async def list_segments(request: web.Request) -> web.Response:
    rt = runtime(request)
    return json_response({"segments": [_view(s) for s in await segments.every(rt.store)]})
