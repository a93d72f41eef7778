"""Bulk import (JSONL, CSV; CLI and API, streamed) and erasure (profile, session and messages
gone; the consent history kept under a hashed key; an opt-out outliving the erasure)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis

from engine.app.runtime import Runtime
from engine.core import keys
from engine.crm.contacts_import import MAX_REPORTED_ERRORS
from gateways.simulators.http_carrier import SimulatedCarrier
from tests.conftest import ANN, API_KEY, Turns, make_config, run_parley, shard

ROWS = 100_000


def _number(i: int) -> str:
    """A distinct GB mobile number for each i in 1..100,000."""
    return f"+4477009{i % 100_000:05d}"


#: line number -> (bad line, the error line the import must report)
BAD_LINES: dict[int, tuple[bytes, str]] = {
    3: (orjson.dumps({"number": _number(3), "fields": {"first_name": "x" * 2001}}),
        "row 3: fields.first_name: longer than 2000 characters"),
    9: (b'{"number": "+447700900009", "fields": {', "row 9: invalid JSON: unexpected end of data at character 40"),
    17: (orjson.dumps({"number": "0770"}), "row 17: number: '0770' is not a phone number: a local number"),
    25: (orjson.dumps({"number": _number(25), "fields": {"first name": "Ann"}}),
         "row 25: fields.first name: names are letters, digits and _"),
    40: (orjson.dumps({"number": _number(40), "timezone": "Mars/Olympus_Mons"}),
         "row 40: timezone: unknown time zone 'Mars/Olympus_Mons'"),
    52: (orjson.dumps({"number": _number(52), "name": "Ann"}), "row 52: name: unknown key"),
}  # fmt: skip


def _scan_count(client: redis.Redis, pattern: str) -> int:
    return sum(1 for _ in client.scan_iter(match=pattern, count=10_000))


def test_cli_imports_100k_jsonl_rows_and_reports_each_bad_one(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "contacts.jsonl"
    with path.open("wb") as fh:
        for line in range(1, ROWS + 1):
            if line in BAD_LINES:
                fh.write(BAD_LINES[line][0] + b"\n")
                continue
            row = {"number": _number(line), "fields": {"first_name": f"N{line}", "plan": "gold"},
                   "tags": ["imported"], "language": "en", "timezone": "Europe/London"}  # fmt: skip
            fh.write(orjson.dumps(row) + b"\n")
        fh.write(b"\n")  # a blank line: skipped, not a row
        # The same number again: the last row wins (and counts as an update).
        fh.write(orjson.dumps({"number": "07700 900001", "fields": {"first_name": "Last"}}) + b"\n")
    errors = tmp_path / "errors.jsonl"

    t0 = time.perf_counter()
    proc = run_parley(
        "contacts", "import", str(path), "--errors", str(errors), env={"PARLEY_REDIS_URL": redis_url}
    )
    took = time.perf_counter() - t0
    print(f"\nCLI import of {ROWS + 1} JSONL rows: {took:.1f} s ({(ROWS + 1) / took:,.0f} rows/s)")

    assert proc.returncode == 1, proc.stderr
    good = ROWS - len(BAD_LINES)
    assert proc.stderr.splitlines()[-1] == (
        f"imported {good + 1} of {ROWS + 1} rows ({good} created, 1 updated), {len(BAD_LINES)} failed"
    )
    reported = [orjson.loads(line) for line in errors.read_bytes().splitlines()]
    assert [e["row"] for e in reported] == sorted(BAD_LINES)
    for e, (line, (_, expected)) in zip(reported, sorted(BAD_LINES.items()), strict=True):
        text = f"row {e['row']}: {e['field'] + ': ' if e['field'] else ''}{e['message']}"
        assert text.startswith(expected), (line, text)
        assert expected in proc.stderr  # the first errors are printed too

    client = redis.Redis.from_url(redis_url)
    try:
        assert _scan_count(client, "p:c:*") == good
        for line in BAD_LINES:
            assert not client.exists(keys.contact(_number(line), shard(_number(line), 8))), line
        for line in (1, 2, 50_000, ROWS):
            h = client.hgetall(keys.contact(_number(line), shard(_number(line), 8)))
            expected_fields = (
                {"first_name": "Last"} if line == 1 else {"first_name": f"N{line}", "plan": "gold"}
            )
            assert orjson.loads(h[b"f"]) == expected_fields
        assert client.hget(keys.contact(_number(2), shard(_number(2), 8)), "tz") == b"Europe/London"
        assert (
            client.hget(keys.contact(_number(1), shard(_number(1), 8)), "tz") is None
        )  # replaced whole by the last row
    finally:
        client.close()


@pytest.fixture
async def small_body_rt(redis_url: str) -> AsyncIterator[Runtime]:
    """An API whose body limit (4 KiB) is far below the imports sent to it."""
    cfg = make_config(redis_url, http={"port": 0, "max_body_bytes": 4096})
    async with Runtime(cfg, worker=False, senders=False) as rt:
        yield rt


async def _post_import(rt: Runtime, body: bytes | AsyncIterator[bytes], content_type: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http,
        http.post(
            f"http://127.0.0.1:{rt.http_port}/v1/contacts:import",
            data=body,
            headers={"Content-Type": content_type},
        ) as r,
    ):
        return r.status, await r.json()


async def test_api_imports_csv_streamed_past_the_body_limit(small_body_rt: Runtime) -> None:
    rt = small_body_rt
    lines = ["number,first_name,company,tags,language"]
    for i in range(1, 5001):
        number = "12" if i == 7 else "0" + _number(i)[3:]  # national format, read in GB
        lines.append(f"{number},Ann {i},Acme,vip;new,{'xx-' if i == 11 else 'en'}")
    lines.append("+447700912345,too,many,cells,en,extra")
    body = ("\r\n".join(lines) + "\r\n").encode()
    assert len(body) > 40 * 4096

    async def chunked() -> AsyncIterator[bytes]:  # sent with chunked encoding, no Content-Length
        for start in range(0, len(body), 7000):
            yield body[start : start + 7000]

    status, report = await _post_import(rt, chunked(), "text/csv")
    assert status == 200, report
    assert report == {
        "rows": 5001, "created": 4998, "updated": 0, "failed": 3, "errors_truncated": False,
        "errors": [
            {"row": 7, "field": "number", "message": "'12' is not a phone number: too short for its country"},
            {"row": 11, "field": "language", "message": "must be a language code like en, es or pt-BR"},
            {"row": 5001, "field": None, "message": "has 6 values, the header has 5 columns"},
        ],
    }  # fmt: skip
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http,
        http.get(f"http://127.0.0.1:{rt.http_port}/v1/contacts/{_number(4000)}") as r,
    ):
        c = await r.json()
    assert c["fields"] == {"first_name": "Ann 4000", "company": "Acme"}
    assert c["tags"] == ["vip", "new"] and c["language"] == "en"

    # With a Content-Length far over the limit too, and as JSONL.
    jsonl = b"".join(orjson.dumps({"number": _number(i)}) + b"\n" for i in range(1, 2001))
    status, report = await _post_import(rt, jsonl, "application/x-ndjson")
    assert status == 200 and (report["rows"], report["created"], report["updated"]) == (2000, 2, 1998)


async def test_csv_quoted_commas_newlines_separated_tags_and_empty_cells(api: aiohttp.ClientSession) -> None:
    csv_text = (
        "\ufeffnumber,name,note,tags,timezone\n"  # a BOM, as spreadsheets write it
        '+447700900123,"Smith, Jr.","said ""hi""\nthen left",vip;early|beta,Europe/London\n'
        "+447700900456,Raj,,,\n"
        '+447700900789,5" screen,ok,,\n'  # a quote inside an unquoted value is a quote
    )
    async with api.post(
        "/v1/contacts:import", data=csv_text.encode(), headers={"Content-Type": "text/csv"}
    ) as r:
        assert r.status == 200
        report = await r.json()
    assert (report["rows"], report["created"], report["failed"]) == (3, 3, 0), report
    async with api.get("/v1/contacts/+447700900123") as r:
        ann = await r.json()
    assert ann["fields"] == {"name": "Smith, Jr.", "note": 'said "hi"\nthen left'}
    assert ann["tags"] == ["vip", "early", "beta"] and ann["timezone"] == "Europe/London"
    async with api.get("/v1/contacts/+447700900456") as r:
        raj = await r.json()
    assert raj["fields"] == {"name": "Raj"} and raj["tags"] == [] and raj["timezone"] is None
    async with api.get("/v1/contacts/+447700900789") as r:
        assert (await r.json())["fields"] == {"name": '5" screen', "note": "ok"}


@pytest.mark.parametrize(
    ("label", "body", "content_type", "status", "message_has"),
    [
        ("no number column", b"phone,name\n1,2\n", "text/csv", 422, "header: needs a 'number' column"),
        ("a bad column name", b"number,first name\n", "text/csv", 422, "column 'first name'"),
        ("a column twice", b"number,a,a\n", "text/csv", 422, "column 'a' appears twice"),
        ("not a file type", b"{}", "application/json", 415, "text/csv"),
    ],
)  # fmt: skip
async def test_import_refusals(
    api: aiohttp.ClientSession, label: str, body: bytes, content_type: str, status: int, message_has: str
) -> None:
    async with api.post("/v1/contacts:import", data=body, headers={"Content-Type": content_type}) as r:
        assert r.status == status, label
        assert message_has in (await r.json())["error"]["message"], label


async def test_errors_are_capped_in_the_report(api: aiohttp.ClientSession) -> None:
    body = b"".join(b'{"number": "x%d"}\n' % i for i in range(MAX_REPORTED_ERRORS + 5))
    async with api.post(
        "/v1/contacts:import", data=body, headers={"Content-Type": "application/x-ndjson"}
    ) as r:
        report = await r.json()
    assert report["failed"] == MAX_REPORTED_ERRORS + 5 and len(report["errors"]) == MAX_REPORTED_ERRORS
    assert report["errors_truncated"] is True and report["errors"][0]["row"] == 1


async def _inbound(api: aiohttp.ClientSession, text: str, pid: str) -> dict[str, Any]:
    async with api.post(
        "/v1/inbound/carrier", json={"from": ANN, "to": "12345", "text": text, "id": pid}
    ) as r:
        assert r.status == 202
        body: dict[str, Any] = await r.json()
        return body


def _everything(client: Any) -> dict[bytes, bytes]:
    """Every key of the test Redis with its contents flattened to bytes (to search for text)."""
    out = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"string":
            value = client.get(key)
        elif kind == b"hash":
            value = b" ".join(k + b"=" + v for k, v in client.hgetall(key).items())
        elif kind == b"zset":
            value = b" ".join(client.zrange(key, 0, -1))
        elif kind == b"stream":
            value = b" ".join(b" ".join(k + b"=" + v for k, v in f.items()) for _, f in client.xrange(key))
        else:
            value = b""
        out[key] = value
    return out


async def test_erasure_leaves_no_profile_session_or_message_and_keeps_consent_hashed(
    rt: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier, turns: Turns
) -> None:
    await api.put(f"/v1/contacts/{ANN}", json={"fields": {"first_name": "Zelda"}})
    await api.put(f"/v1/contacts/{ANN}/consent", json={"status": "opted_in", "source": "web", "note": "form"})
    await api.post("/v1/flows/nps/start", json={"contacts": [ANN]})
    assert (await carrier.next_message(ANN)).text.startswith("Hi Zelda")
    await turns.wait((await _inbound(api, "9", "mo-1"))["event_id"])
    assert (await carrier.next_message(ANN)).text.startswith("Wonderful")
    async with api.post(f"/v1/contacts/{ANN}/events", json={"type": "purchase", "id": "order-1"}) as resp:
        assert (await resp.json())["attributed"]["flow"] == "nps"  # a journey touch and a conversion
    r = rt.store.redis
    shard_timers = keys.timers(keys.shard_of(ANN, rt.config.engine.shards))
    assert (
        await r.exists(
            keys.session(ANN, shard(ANN)),
            keys.message_records(ANN, shard(ANN)),
            keys.consent_ledger(ANN, shard(ANN)),
        )
        == 3
    )
    assert any(m.startswith(ANN.encode()) for m in await r.zrange(shard_timers, 0, -1))  # waiting

    async with api.delete(f"/v1/contacts/{ANN}") as resp:
        assert resp.status == 204
    s = shard(ANN)
    per_contact = [keys.contact(ANN, s), keys.session(ANN, s), keys.message_index(ANN, s), keys.message_records(ANN, s),
                   keys.counted_sends(ANN, s), keys.consent_ledger(ANN, s), keys.governance(ANN, s)]  # fmt: skip
    assert await r.exists(*per_contact) == 0
    assert not any(m.startswith(ANN.encode()) for m in await r.zrange(shard_timers, 0, -1))
    sync = redis.Redis.from_url(rt.redis_url)
    try:
        stored = _everything(sync)
    finally:
        sync.close()
    for key, value in stored.items():
        assert b"Zelda" not in value, key  # not in a profile, nor in a message text ("Hi Zelda, ...")
        if not key.startswith(
            b"p:pid:"
        ):  # receipts' provider-id map: expires (receipt_window), as documented
            assert ANN.encode() not in value, key  # nor the number (the flow outcome events are gone too)
        # No key is named by the number: inbound dedupe marks are fields under a hash of it.
        assert ANN.encode() not in key, key
    hashed = [k for k in stored if k.startswith(b"p:cl:h:")]
    assert len(hashed) == 1 and ANN.encode() not in stored[hashed[0]]

    for path in (f"/v1/contacts/{ANN}", f"/v1/conversations/{ANN}"):
        async with api.get(path) as resp:
            assert resp.status == 404, path
    async with api.get("/v1/messages", params={"contact": ANN}) as resp:
        assert (await resp.json())["messages"] == []
    async with api.get(f"/v1/contacts/{ANN}/consent") as resp:
        consent = await resp.json()
    assert consent["status"] == "unknown"  # an opt-in does not outlive the erasure
    assert [(e["change"], e["source"], e["cause"]) for e in consent["ledger"]] == [
        ("opted_in", "web", "form"), ("erased", "api", "contact erased"),
    ]  # fmt: skip
    assert hashed[0].decode().endswith(consent["erased_ledger"])
    async with api.delete(f"/v1/contacts/{ANN}") as resp:  # idempotent: nothing left to erase
        assert resp.status == 404


async def test_an_opted_out_number_stays_opted_out_after_erasure_and_reimport(
    rt: Runtime, api: aiohttp.ClientSession, carrier: SimulatedCarrier, turns: Turns
) -> None:
    await api.put(f"/v1/contacts/{ANN}", json={"fields": {"first_name": "Ann"}})
    await turns.wait((await _inbound(api, "STOP", "mo-stop"))["event_id"])
    assert "unsubscribed" in (await carrier.next_message(ANN)).text
    async with api.delete(f"/v1/contacts/{ANN}") as resp:
        assert resp.status == 204

    line = orjson.dumps({"number": ANN, "fields": {"first_name": "Ann"}}) + b"\n"
    async with api.post(
        "/v1/contacts:import", data=line, headers={"Content-Type": "application/x-ndjson"}
    ) as r:
        assert (await r.json())["created"] == 1
    async with api.post("/v1/flows/nps/start", json={"contacts": [ANN]}) as r:
        started = await r.json()
    done = await turns.wait(started["started"][0]["event_id"])
    assert done.result == "skipped_opted_out" and done.outbound_ids == []
    async with api.get("/v1/messages", params={"contact": ANN}) as resp:
        assert (await resp.json())["messages"] == []  # the old log went with the erasure
    assert len([m for m in carrier.received if m.to == ANN]) == 1  # just the STOP confirmation

    async with api.get(f"/v1/contacts/{ANN}/consent") as resp:
        consent = await resp.json()
    assert consent["status"] == "opted_out"
    assert [(e["change"], e["source"]) for e in consent["ledger"]] == [
        ("opted_out", "keyword"),
        ("erased", "api"),
    ]
    assert consent["ledger"][1]["cause"] == "contact erased; opt-out kept"


def test_cli_forget_and_usage_errors(redis_url: str, tmp_path: Path) -> None:
    env = {"PARLEY_REDIS_URL": redis_url}
    path = tmp_path / "one.csv"
    path.write_text("number,first_name\n07700 900123,Ann\n")
    proc = run_parley("contacts", "import", str(path), env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "imported 1 of 1 rows (1 created, 0 updated), 0 failed"

    proc = run_parley("contacts", "forget", "07700 900123", env=env)
    assert proc.returncode == 0 and "erased +447700900123" in proc.stderr, proc.stderr
    proc = run_parley("contacts", "forget", "+447700900123", env=env)
    assert proc.returncode == 1 and "nothing held" in proc.stderr

    (tmp_path / "contacts.txt").write_text("number\n")
    for args, env_used, says in [
        (["import", str(tmp_path / "contacts.txt")], env, "--format"),
        (["import", str(tmp_path / "missing.csv")], env, "no file"),
        (["import", str(path)], {}, "redis.url"),
        (["forget", "abc"], env, "not a phone number"),
    ]:
        proc = run_parley("contacts", *args, env=env_used)
        assert proc.returncode == 2 and says in proc.stderr, (args, proc.stderr)
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("phone\n1\n")
    proc = run_parley("contacts", "import", str(bad_header), env=env)
    assert proc.returncode == 2 and "needs a 'number' column" in proc.stderr, proc.stderr


async def test_import_after_redis_lost_its_scripts(rt: Runtime, api: aiohttp.ClientSession) -> None:
    await rt.store.redis.script_flush()
    body = b"".join(orjson.dumps({"number": _number(i)}) + b"\n" for i in range(1, 11))
    async with api.post(
        "/v1/contacts:import", data=body, headers={"Content-Type": "application/x-ndjson"}
    ) as r:
        assert (await r.json())["created"] == 10


async def test_erasure_also_removes_the_contacts_waiting_webhook_letters(
    rt: Runtime, api: aiohttp.ClientSession
) -> None:
    r = rt.store.redis
    await api.put(f"/v1/contacts/{ANN}", json={"fields": {}})
    other = orjson.dumps({"type": "ended", "contact": "+447700900456"})
    await r.xadd(
        keys.webhook_dead(0), {"e": orjson.dumps({"type": "ended", "contact": ANN}), "error": "HTTP 500"}
    )
    await r.xadd(keys.webhook_dead(0), {"e": other, "error": "HTTP 500"})
    await r.xadd(keys.webhook_retry(0), {"e": orjson.dumps({"type": "result", "contact": ANN})})
    async with api.delete(f"/v1/contacts/{ANN}") as resp:
        assert resp.status == 204
    assert [f[b"e"] for _, f in await r.xrange(keys.webhook_dead(0))] == [other]
    assert await r.xlen(keys.webhook_retry(0)) == 0
