"""HTTP conformance found by a fuzzer: 405 carries ``Allow``; provider webhook routes answer an
unknown gateway as they answer a known one to a caller without credentials; a number with an
extension is refused, naming the field; the OpenAPI description is as strict as the server,
names and tags every operation, and describes the import's CSV and NDJSON bodies."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.api.routes import spec
from engine.app.runtime import Runtime
from engine.core.numbers import InvalidNumber, to_e164
from tests.conftest import ANN, API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _base(rt: Runtime) -> str:
    return f"http://127.0.0.1:{rt.http_port}"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/healthz", {"GET", "HEAD"}),
        ("POST", f"/v1/contacts/{ANN}", {"GET", "HEAD", "PUT", "DELETE"}),
        ("PUT", "/v1/messages", {"GET", "HEAD", "POST"}),
        ("GET", "/v1/inbound/carrier", {"POST"}),
    ],
)
async def test_a_405_says_which_methods_are_allowed(
    rt: Runtime, method: str, path: str, allowed: set[str]
) -> None:
    async with aiohttp.ClientSession(_base(rt)) as s, s.request(method, path, headers=AUTH) as r:
        assert r.status == 405
        assert {m.strip() for m in r.headers["Allow"].split(",")} == allowed
        assert (await r.json())["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("route", ["inbound", "receipts"])
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["none", "wrong bearer", "basic"],
)
async def test_without_credentials_an_unknown_gateway_looks_like_a_known_one(
    rt: Runtime, route: str, headers: dict[str, str]
) -> None:
    body = {"from": ANN, "text": "hi", "id": "probe-1"}
    answers = []
    async with aiohttp.ClientSession(_base(rt)) as s:
        for gateway in ("carrier", "nope", "Carrier", "x" * 200):
            async with s.post(f"/v1/{route}/{gateway}", json=body, headers=headers) as r:
                answers.append((r.status, r.headers.get("WWW-Authenticate"), await r.read()))
        # With the API key, an unknown gateway is named as such.
        async with s.post(f"/v1/{route}/nope", json=body, headers=AUTH) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "gateway_not_found"
    assert answers[0][0] == 401
    assert all(a == answers[0] for a in answers), answers


#: (label, path number) that carry an extension or trailing characters; each must be a 422.
EXTENSIONS = [
    ("ext.", "+44 7700 900123 ext. 5"),
    ("bare x", "+447700900123x"),
    ("x and digits", "+447700900123 x5"),
    ("hash", "+447700900123#5"),
    ("RFC 3966", "+447700900123;ext=5"),
    ("comma pause", "+447700900123,5"),
    ("extension word", "+44 7700 900123 extension 12"),
    ("letters", "+447700900123abc"),
]


@pytest.mark.parametrize(("label", "number"), EXTENSIONS, ids=[e[0] for e in EXTENSIONS])
async def test_a_number_with_an_extension_is_refused_naming_the_field(
    api: aiohttp.ClientSession, label: str, number: str
) -> None:
    from urllib.parse import quote

    async with api.put(f"/v1/contacts/{quote(number)}", json={"fields": {}}) as r:
        assert r.status == 422, label
        err = (await r.json())["error"]
    assert err["code"] == "invalid_number" and err["message"].startswith("number: ")
    assert "extension" in err["message"] or "not part of a phone number" in err["message"]
    async with api.get(f"/v1/contacts/{ANN}") as r:
        assert r.status == 404  # nothing was stored under the number without its extension
    async with api.post("/v1/flows/nps/start", json={"contacts": [number]}) as r:
        assert r.status == 422 and (await r.json())["error"]["message"].startswith("contacts[0]: ")
    async with api.post("/v1/inbound/carrier", json={"from": number, "text": "hi", "id": label}) as r:
        assert r.status == 422 and (await r.json())["error"]["message"].startswith("from: ")


@pytest.mark.parametrize(
    "number",
    ["+447700900123", "+44 7700 900123", "07700 900123", "+44 (0)7700-900.123", "0044 7700 900123"],
)
def test_the_usual_ways_of_writing_a_number_still_read(number: str) -> None:
    assert to_e164(number, "GB") == ANN


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    marker=st.sampled_from([" ext. ", " ext ", "x", " x", "#", ";ext=", ",", " extension ", " ext.", "X"]),
    ext=st.text("0123456789", max_size=6),
)
def test_no_extension_is_ever_dropped_silently(marker: str, ext: str) -> None:
    with pytest.raises(InvalidNumber):
        to_e164(f"+447700900123{marker}{ext}", "GB")


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in doc["paths"].items() for method, op in ops.items()]


def test_every_operation_has_a_unique_operation_id_and_declared_tags() -> None:
    doc = spec()
    ids = [op.get("operationId") for _, _, op in _operations(doc)]
    assert all(isinstance(i, str) and re.fullmatch(r"[a-z][a-z0-9_]*", i) for i in ids), ids
    assert len(set(ids)) == len(ids), "operationIds repeat"
    declared = {t["name"] for t in doc["tags"]}
    assert all(t.get("description") for t in doc["tags"])
    for path, method, op in _operations(doc):
        assert op.get("tags") and set(op["tags"]) <= declared, (method, path)
    assert declared == {t for _, _, op in _operations(doc) for t in op["tags"]}, "a tag nobody uses"


def _number_schemas(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every schema in the description that holds a phone number (by its name or its items)."""
    found: list[tuple[str, dict[str, Any]]] = []
    for path, method, op in _operations(doc):
        for p in op.get("parameters", []):
            if p["name"] in ("number", "contact"):
                found.append((f"{method} {path} {p['name']}", p["schema"]))
    start = doc["components"]["schemas"]["StartIn"]["properties"]["contacts"]["items"]
    found.append(("StartIn.contacts[]", start))
    return found


def test_every_number_in_the_description_has_the_servers_pattern() -> None:
    doc = spec()
    schemas = _number_schemas(doc)
    assert len(schemas) == 16  # 15 routes' numbers (5 of them the inbox's) and StartIn.contacts
    for where, schema in schemas:
        assert schema.get("$ref") == "#/components/schemas/PhoneNumber", where
    pattern = re.compile(doc["components"]["schemas"]["PhoneNumber"]["pattern"])
    for refused in ("0", "12", "hello", "+44 7700 900123 ext. 5", "+447700900123x", "", " "):
        assert not pattern.search(refused), refused
    for accepted in ("+447700900123", "+14155552671", "+33612345678"):
        assert pattern.search(accepted), accepted


async def test_numbers_matching_the_pattern_are_not_refused_as_numbers(api: aiohttp.ClientSession) -> None:
    """What the description calls a number, the server reads as one (no 422 ``invalid_number``)."""
    from hypothesis import find
    from hypothesis.errors import NoSuchExample

    pattern = spec()["components"]["schemas"]["PhoneNumber"]["pattern"]
    refused: list[str] = []

    def probe(n: str) -> bool:
        try:
            to_e164(n, "GB")
        except InvalidNumber:
            refused.append(n)
        return len(refused) > 0

    with pytest.raises(NoSuchExample):
        find(
            st.from_regex(pattern, fullmatch=True), probe, settings=settings(max_examples=500, database=None)
        )
    assert refused == []
    async with api.get("/v1/contacts/+14155552671") as r:
        assert r.status == 404  # read as a number, just not a contact


async def test_the_import_bodies_are_described_and_their_examples_import(api: aiohttp.ClientSession) -> None:
    body = spec()["paths"]["/v1/contacts:import"]["post"]["requestBody"]["content"]
    assert {"text/csv", "application/x-ndjson"} <= set(body)
    for media, content in body.items():
        schema = content["schema"]
        assert schema["type"] == "string" and schema.get("description"), media
        assert "number" in schema["description"]
        example = content["example"]
        async with api.post(
            "/v1/contacts:import", data=example.encode(), headers={"Content-Type": media}
        ) as r:
            assert r.status == 200, media
            report = await r.json()
        assert report["failed"] == 0 and report["rows"] >= 2, (media, report)
    assert orjson.loads(body["application/x-ndjson"]["example"].splitlines()[0])["number"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "field"),
    [
        ("GET", "/v1/webhooks/dead?webhook=0", None, 404, "webhook_not_found", ""),
        ("POST", "/v1/webhooks/dead:replay", {"webhook": 3}, 404, "webhook_not_found", ""),
        ("POST", "/v1/webhooks/dead:replay", {"ids": [], "webhook": None}, 422, "invalid", "ids: "),
        ("POST", "/v1/webhooks/dead:replay", {"webhook": "0"}, 422, "invalid", "webhook: "),
        ("POST", "/v1/webhooks/dead:replay", {"webhook": True}, 422, "invalid", "webhook: "),
        ("POST", "/v1/webhooks/dead:replay", {"webhook": 2.0}, 404, "webhook_not_found", ""),
        ("POST", "/v1/webhooks/dead:replay", {"webhook": 2.5}, 422, "invalid", "webhook: "),
        ("POST", "/v1/contacts:import", None, 400, "bad_request", "body is empty"),
    ],
)
async def test_routes_refuse_what_their_description_refuses(
    api: aiohttp.ClientSession, method: str, path: str, body: Any, status: int, code: str, field: str
) -> None:
    async with api.request(method, path, json=body) as r:
        err = (await r.json())["error"]
        assert (r.status, err["code"]) == (status, code), err
        assert err["message"].startswith(field)
