"""Typed request models: reading a body or a query string into one, and declaring an operation.

Every route's request body and query string is a pydantic model that lives beside its handler;
``read_body`` and ``read_query`` are the only request checks, and ``engine/api/openapi.py``
writes ``/v1/openapi.json`` from the same models (their JSON Schema) and from the
:func:`operation` each handler is declared with. A rule is therefore written once.

Why pydantic v2 and not msgspec (loadtests/bench_api_models.py on this 2-core machine, under
load; best of 7 x 20,000 calls): decoding and validating a generic connector's inbound body
(from, to, text, id) costs 0.5-0.8 µs with a msgspec Struct and 1.1-1.2 µs with a pydantic model
(``model_validate_json``); a flow start with 20 contacts and 2 arms 6.7-9.0 µs with msgspec and
5.4-6.9 µs with pydantic (the phone pattern dominates both). Against the ~650 µs one turn may
spend at 3,000 turns/s either is under 0.2 %, and the inbound route reads no model anyway (each
connector parses its provider's body): cost does not decide. The rest does: pydantic reports
an error's location as a tuple (``("arms", 0, "name")``, rendered ``arms[0].name``) instead of
a sentence to parse, validators reach the runtime's default region through ``context``, its
JSON Schema generator takes hooks (``WithJsonSchema``, ``json_schema_extra``,
``__get_pydantic_json_schema__``) for the phone pattern and the time zone list, it was already
installed (schemathesis depends on it), and pydantic-settings can carry the configuration next.

Errors keep today's shape: a 422 whose message starts with the field's path
(``contacts[1]: ...``), code ``invalid`` (``invalid_number`` for a phone number); a model may
give its own wording per path in ``MESSAGES`` (``{"arms[].weight": "must be a number above 0"}``).
A domain check that raises :class:`~engine.core.errors.Unprocessable` itself (contacts' fields, a
start's audience) passes through unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, TypeVar

from aiohttp import web
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    ValidationInfo,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from engine.core.errors import BadRequest, PayloadTooLarge, Unprocessable
from engine.core.numbers import InvalidNumber, e164_pattern, to_e164
from engine.core.ports import Services

M = TypeVar("M", bound="Model")
H = TypeVar("H", bound=Callable[..., Awaitable[web.StreamResponse]])

#: Where the components live in the description (and what a ``$ref`` to a model says).
REF = "#/components/schemas/{model}"
#: Errors our own validators raise with their own wording and code (kept as they are).
OWN_ERRORS = frozenset({"invalid_number"})


class Model(BaseModel):
    """A request model: unknown keys refused, no coercion (``"1"`` is not a number, ``1`` not true)."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    #: Today's wording for a path's problems (``name``, ``list[]``, ``list[].name``).
    MESSAGES: ClassVar[dict[str, str]] = {}


class Query(Model):
    """A query string's model: its values are text, so numbers are read from it (``?limit=5``)."""

    model_config = ConfigDict(extra="ignore", strict=False)


def _phone(value: str, info: ValidationInfo) -> str:
    try:
        return to_e164(value, (info.context or {})["region"])
    except InvalidNumber as exc:
        raise PydanticCustomError(
            "invalid_number", "{value} is not a phone number: {why}", {"value": repr(value), "why": str(exc)}
        ) from None


class _PhoneNumber:
    """The PhoneNumber component: E.164 by the pattern of phonenumbers' metadata."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.with_info_after_validator_function(_phone, core_schema.str_schema(strict=True))

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return phone_schema()


def phone_schema() -> JsonSchemaValue:
    """The PhoneNumber component (openapi.py refers to it wherever a model holds a number)."""
    return {
        "type": "string",
        "pattern": e164_pattern(),
        "description": "A phone number in E.164 (+ country code, national number, no spaces), of "
        "a length possible for its country. The server also reads common national and spaced "
        "forms (07700 900123, in numbers.default_region) and always answers E.164; it refuses "
        "a number with an extension (ext. 5, x5, #5).",
        "examples": ["+447700900123"],
    }


#: A phone number: read in any common form (``numbers.default_region`` from the validation
#: context), E.164 after; described once, as the PhoneNumber component.
PhoneNumber = Annotated[str, _PhoneNumber]


def _no_default(schema: JsonSchemaValue) -> None:
    schema.pop("default", None)


#: The default of a field that may be left out but not sent as null (``null`` is refused, as
#: its schema says: no ``default: null`` there). Its value is then None, whatever its annotation
#: says: read it as ``X | None`` (the annotation is what validation and the schema need).
OMITTED: Any = Field(default=None, json_schema_extra=_no_default)


def path_of(loc: tuple[int | str, ...]) -> str:
    """``("arms", 0, "name")`` as ``arms[0].name``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _generic(loc: tuple[int | str, ...]) -> str:
    return path_of(tuple(0 if isinstance(p, int) else p for p in loc)).replace("[0]", "[]")


def _is_tag(part: int | str) -> bool:
    """Whether a location part names a union member or a validator (``int``, ``list[str]``,
    ``function-after[...]``) rather than a field: no field of ours is named like a type."""
    return isinstance(part, str) and (part in _TYPE_TAGS or "[" in part or part.startswith("function-"))


_TYPE_TAGS = frozenset({"int", "float", "str", "bool", "none", "list", "dict", "constrained-str"})


def refusal(model: type[Model], exc: ValidationError) -> Unprocessable:
    """The first problem, as today's 422: the field's path, then what is wrong. An unknown key
    comes first (as it always did: the keys a route reads are what a caller needs to see)."""
    errors = exc.errors(include_url=False)
    unknown = [e for e in errors if e["type"] == "extra_forbidden" and len(e["loc"]) == 1]
    err = (unknown or errors)[0]
    loc = tuple(p for p in err["loc"] if not _is_tag(p))
    where = path_of(loc) or "body"
    if err["type"] in OWN_ERRORS:
        return Unprocessable(where, err["msg"], code=err["type"])
    if unknown:
        allowed = ", ".join(sorted(f.alias or n for n, f in model.model_fields.items()))
        return Unprocessable(where, f"unknown field (allowed: {allowed})")
    wording = model.MESSAGES.get(_generic(loc))
    if wording is None and err["type"] == "missing":
        wording = "required"
    return Unprocessable(where, wording or err["msg"][0].lower() + err["msg"][1:])


def validate(model: type[M], data: Any, rt: Services, *, json: bool = False) -> M:
    """``data`` (a dict, or JSON bytes when ``json``) as ``model``, or today's 400/422."""
    context = {"region": rt.config.numbers.default_region}
    try:
        if json:
            return model.model_validate_json(data, context=context)
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        if err["type"] == "json_invalid":
            raise BadRequest(f"body is not valid JSON: {err['ctx']['error']}") from None
        if err["type"] == "model_type" and not err["loc"]:
            raise BadRequest("body must be a JSON object") from None
        raise refusal(model, exc) from None


async def read_body(request: web.Request, model: type[M], rt: Services) -> M:
    """The request body as ``model``, or a 400 (empty, not JSON, not an object), 413 or 422."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"body is larger than {request.client_max_size} bytes") from None
    if not raw:
        raise BadRequest("body is empty; send a JSON object")
    return validate(model, raw, rt, json=True)


def read_query(request: web.Request, model: type[M], rt: Services) -> M:
    """The query string as ``model`` (a name given twice: its first value), or a 422."""
    return validate(model, {k: request.query[k] for k in request.query}, rt)


# The description of an operation, declared on its handler.


@dataclass(frozen=True)
class Answer:
    """One response: its description and, when it has a body, a model or a schema per media type."""

    description: str
    body: type[BaseModel] | dict[str, Any] | None = None
    media: str = "application/json"
    more: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # other media types: schema


@dataclass(frozen=True)
class Param:
    """A path parameter (query parameters come from the operation's ``query`` model)."""

    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})


NUMBER = Param("number", "the contact's phone number, E.164", {"$ref": REF.format(model="PhoneNumber")})
FLOW = Param("flow", "the flow's name")
GATEWAY = Param("gateway", "a gateway name from the config")


@dataclass(frozen=True)
class Operation:
    """What ``/v1/openapi.json`` says of one route; ``id`` is a generated client's method name."""

    id: str
    tag: str
    summary: str
    answers: Mapping[int, Answer]
    errors: tuple[int, ...] = ()
    params: tuple[Param, ...] = ()
    body: type[Model] | dict[str, Any] | None = None
    body_required: bool = True
    query: type[Query] | None = None
    public: bool = False


#: Every declared handler's operation (openapi.py reads it through the router's table).
OPERATIONS: dict[Callable[..., Any], Operation] = {}


def operation(op: Operation) -> Callable[[H], H]:
    """Declare ``op`` as the handler's description (the handler itself is unchanged)."""

    def register(handler: H) -> H:
        OPERATIONS[handler] = op
        return handler

    return register
