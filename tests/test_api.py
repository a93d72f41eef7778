"""HTTP API: every route's happy path, and bad input as labelled cases (status + error code)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from engine.app.runtime import Runtime
from tests.conftest import ANN, API_KEY, ROOT


@dataclass(frozen=True)
class Case:
    label: str
    method: str
    path: str
    body: Any = None  # dict/list -> JSON; bytes -> sent raw
    status: int = 200
    code: str | None = None
    message_has: str = ""
    headers: dict[str, str] | None = None


BAD_INPUT = [
    Case("no key", "GET", f"/v1/contacts/{ANN}", status=401, code="unauthorized", headers={}),
    Case("wrong key", "GET", f"/v1/contacts/{ANN}", status=401, code="unauthorized",
         message_has="unknown API key", headers={"Authorization": "Bearer nope-nope-nope-nope"}),
    Case("basic auth instead of bearer", "GET", f"/v1/contacts/{ANN}", status=401, code="unauthorized",
         headers={"Authorization": "Basic dXNlcjpwYXNz"}),
    Case("malformed JSON", "PUT", f"/v1/contacts/{ANN}", b'{"fields": {', status=400, code="bad_request",
         message_has="not valid JSON"),
    Case("empty body", "PUT", f"/v1/contacts/{ANN}", b"", status=400, code="bad_request"),
    Case("JSON array body", "PUT", f"/v1/contacts/{ANN}", [1, 2], status=400, code="bad_request",
         message_has="JSON object"),
    Case("unknown contact field key", "PUT", f"/v1/contacts/{ANN}", {"feilds": {}}, status=422,
         code="invalid", message_has="feilds"),
    Case("invalid number in path", "PUT", "/v1/contacts/12", {"fields": {}}, status=422,
         code="invalid_number", message_has="number"),
    Case("letters as number", "GET", "/v1/contacts/hello", status=422, code="invalid_number"),
    Case("bad timezone", "PUT", f"/v1/contacts/{ANN}", {"timezone": "Mars/Olympus"}, status=422,
         message_has="timezone"),
    Case("bad language", "PUT", f"/v1/contacts/{ANN}", {"language": "English"}, status=422,
         message_has="language"),
    Case("nested field", "PUT", f"/v1/contacts/{ANN}", {"fields": {"a": {"b": 1}}}, status=422,
         message_has="fields.a"),
    Case("reserved field", "PUT", f"/v1/contacts/{ANN}", {"fields": {"number": "x"}}, status=422,
         message_has="fields.number"),
    Case("unknown contact", "GET", "/v1/contacts/+447700900999", status=404, code="contact_not_found"),
    Case("unknown flow", "POST", "/v1/flows/nope/start", {"contacts": [ANN]}, status=404,
         code="flow_not_found", message_has="nps"),
    Case("start without contacts", "POST", "/v1/flows/nps/start", {"params": {}}, status=422,
         message_has="contacts"),
    Case("start with a bad number", "POST", "/v1/flows/nps/start", {"contacts": [ANN, "x"]}, status=422,
         code="invalid_number", message_has="contacts[1]"),
    Case("start for unknown contact", "POST", "/v1/flows/nps/start", {"contacts": ["+447700900999"]},
         status=404, code="contact_not_found", message_has="+447700900999"),
    Case("inbound on unknown gateway", "POST", "/v1/inbound/nope",
         {"from": ANN, "text": "hi", "id": "1"}, status=404, code="gateway_not_found"),
    Case("inbound without id", "POST", "/v1/inbound/carrier", {"from": ANN, "text": "hi"}, status=422,
         message_has="id"),
    Case("inbound without from", "POST", "/v1/inbound/carrier", {"text": "hi", "id": "1"}, status=422,
         message_has="from"),
    Case("inbound from a bad number", "POST", "/v1/inbound/carrier", {"from": "abc", "text": "hi", "id": "1"},
         status=422, code="invalid_number"),
    Case("inbound text not a string", "POST", "/v1/inbound/carrier", {"from": ANN, "text": 9, "id": "1"},
         status=422, message_has="text"),
    Case("messages without contact", "GET", "/v1/messages", status=422, message_has="contact"),
    Case("messages with a bad limit", "GET", f"/v1/messages?contact={ANN}&limit=0", status=422,
         message_has="limit"),
    Case("conversation of unknown contact", "GET", "/v1/conversations/+447700900999", status=404,
         code="contact_not_found"),
    Case("unknown route", "GET", "/v1/nothing", status=404, code="not_found"),
    Case("wrong method", "DELETE", "/healthz", status=405, code="method_not_allowed"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c.label for c in BAD_INPUT])
async def test_bad_input_is_refused_with_a_clear_error(rt: Runtime, case: Case) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"} if case.headers is None else case.headers
    kwargs: dict[str, Any] = {"headers": headers}
    if isinstance(case.body, bytes):
        kwargs["data"] = case.body
    elif case.body is not None:
        kwargs["json"] = case.body
    async with aiohttp.ClientSession(f"http://127.0.0.1:{rt.http_port}") as s:
        if case.path.startswith("/v1/inbound") or "start" in case.path:
            await s.put(f"/v1/contacts/{ANN}", json={}, headers={"Authorization": f"Bearer {API_KEY}"})
        async with s.request(case.method, case.path, **kwargs) as resp:
            body = await resp.json()
    assert resp.status == case.status, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    if case.code:
        assert body["error"]["code"] == case.code
    assert case.message_has in body["error"]["message"]


async def test_oversize_body_is_413(redis_url: str) -> None:
    from tests.conftest import make_config

    cfg = make_config(redis_url, http={"max_body_bytes": 2048}, gateways={"c": {"type": "console"}})
    async with Runtime(cfg) as rt, aiohttp.ClientSession(f"http://127.0.0.1:{rt.http_port}") as s:
        big = {"fields": {"note": "x" * 1900, "more": "y" * 1900}}
        async with s.put(
            f"/v1/contacts/{ANN}", json=big, headers={"Authorization": f"Bearer {API_KEY}"}
        ) as r:
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "payload_too_large"


async def test_no_configured_keys_refuses_everything(redis_url: str) -> None:
    from tests.conftest import make_config

    cfg = make_config(redis_url, api={"keys": []})
    async with (
        Runtime(cfg) as rt,
        aiohttp.ClientSession(f"http://127.0.0.1:{rt.http_port}") as s,
        s.get(f"/v1/contacts/{ANN}", headers={"Authorization": "Bearer anything-at-all-1234"}) as r,
    ):
        assert r.status == 401
        assert "api.keys" in (await r.json())["error"]["message"]


async def test_contact_upsert_normalises_and_replaces(api: aiohttp.ClientSession) -> None:
    async with api.put(
        "/v1/contacts/07700 900123",
        json={
            "fields": {"first_name": "Ann", "tier": "gold"},
            "language": "en",
            "timezone": "Europe/London",
        },
    ) as r:
        assert r.status == 201
        created = await r.json()
    assert created["number"] == ANN
    assert created["fields"] == {"first_name": "Ann", "tier": "gold"}
    async with api.put(f"/v1/contacts/{ANN}", json={"fields": {"first_name": "Ann"}}) as r:
        assert r.status == 200
    async with api.get("/v1/contacts/0044 7700 900123") as r:
        got = await r.json()
    # PUT replaces: the CRM's latest view wins, dropped fields and language are gone.
    assert got["fields"] == {"first_name": "Ann"}
    assert got["language"] is None and got["timezone"] is None
    assert got["created_at"] == created["created_at"]


async def test_start_skips_contacts_missing_a_required_field(api: aiohttp.ClientSession) -> None:
    await api.put(f"/v1/contacts/{ANN}", json={"fields": {"first_name": "Ann"}})
    await api.put("/v1/contacts/+447700900456", json={"fields": {"appointment_at": "2026-11-25T10:30"}})
    async with api.post("/v1/flows/appointment/start", json={"contacts": [ANN, "+447700900456"]}) as r:
        body = await r.json()
    assert r.status == 202
    assert body["skipped"] == [{"contact": ANN, "reason": "missing_fields", "fields": "appointment_at"}]
    assert [s["contact"] for s in body["started"]] == ["+447700900456"]


async def test_conversation_of_contact_without_one(api: aiohttp.ClientSession) -> None:
    await api.put(f"/v1/contacts/{ANN}", json={})
    async with api.get(f"/v1/conversations/{ANN}") as r:
        assert r.status == 200
        assert (await r.json())["status"] == "none"


async def test_healthz_and_metrics_need_no_key(rt: Runtime) -> None:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{rt.http_port}") as s:
        async with s.get("/healthz") as r:
            assert r.status == 200
            health = await r.json()
        async with s.get("/metrics") as r:
            assert r.status == 200
            text = await r.text()
    shipped = sorted(p.stem for p in (ROOT / "rules").glob("*.yaml"))
    assert health["status"] == "ok" and health["redis"] == "ok" and health["flows"] == shipped
    assert "parley_turn_stage_seconds" in text
    assert 'parley_http_request_seconds_count{route="/healthz",status="200"} 1.0' in text
