"""The Twilio and Jasmin connectors against stub providers on loopback: request shapes, how each
answer maps onto retry / reject / maybe-taken, and their webhooks through Parley's HTTP API."""

from __future__ import annotations

import base64
import socket
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.app.runtime import Runtime
from engine.core import keys
from engine.core.errors import (
    ConfigError,
    GatewayRejected,
    GatewayTimeout,
    GatewayUnavailable,
    Unprocessable,
    WebhookRejected,
)
from gateways.base import OutboundMessage, Webhook
from gateways.receipts import parked_key
from gateways.registry import build_gateway, validate_gateway_config
from gateways.simulators.jasmin_stub import JasminStub
from gateways.simulators.twilio_stub import TwilioStub, twilio_signature
from tests.conftest import ANN, API_KEY, make_config

SID = "AC" + "1234567890abcdef" * 2
TOKEN = "twilio-auth-token-0123"
FROM = "+15005550006"
PUBLIC = "https://sms.example.com"
UNICODE = "Привет 👋"


def msg(text: str = "Hello", sender: str = FROM, to: str = ANN) -> OutboundMessage:
    return OutboundMessage(id="out-1-1763812800000-0-0", to=to, text=text, sender=sender, segments=1)


def twilio_raw(stub: TwilioStub, **extra: Any) -> dict[str, Any]:
    return {"type": "twilio", "account_sid": SID, "auth_token": TOKEN, "sender": FROM,
            "base_url": stub.base_url, "public_url": PUBLIC, **extra}  # fmt: skip


def jasmin_raw(stub: JasminStub, **extra: Any) -> dict[str, Any]:
    return {"type": "jasmin", "url": stub.url, "username": "parley", "password": "jpass",
            "sender": "ACME", "public_url": PUBLIC, **extra}  # fmt: skip


@pytest.fixture
async def twilio() -> AsyncIterator[TwilioStub]:
    async with TwilioStub(SID, TOKEN) as stub:
        yield stub


@pytest.fixture
async def jasmin() -> AsyncIterator[JasminStub]:
    async with JasminStub("parley", "jpass") as stub:
        yield stub


# Twilio: sending -------------------------------------------------------------------------------


async def test_twilio_send_posts_the_messages_form_with_basic_auth_and_status_callback(
    twilio: TwilioStub,
) -> None:
    async with build_gateway("tw", twilio_raw(twilio)) as gw:
        result = await gw.send(msg(UNICODE))
    (req,) = twilio.received
    assert req.account_sid == SID and req.auth == (SID, TOKEN)
    assert req.form == {
        "To": ANN,
        "From": FROM,
        "Body": UNICODE,
        "StatusCallback": f"{PUBLIC}/v1/receipts/tw",
    }
    assert result.provider_id == req.sid and req.sid.startswith("SM")


async def test_twilio_send_through_a_messaging_service_without_callbacks(twilio: TwilioStub) -> None:
    raw = twilio_raw(twilio, sender="", messaging_service_sid="MG" + "0" * 32, status_callback=False)
    async with build_gateway("tw", raw) as gw:
        await gw.send(msg(sender=""))
    assert twilio.received[0].form == {"To": ANN, "Body": "Hello", "MessagingServiceSid": "MG" + "0" * 32}


async def test_twilio_asks_for_no_status_callback_without_a_public_url(twilio: TwilioStub) -> None:
    async with build_gateway("tw", twilio_raw(twilio, public_url="")) as gw:
        await gw.send(msg())
    assert "StatusCallback" not in twilio.received[0].form


async def test_twilio_rejections_name_twilios_error_code_and_message(twilio: TwilioStub) -> None:
    twilio.fail_next.append(
        (400, {"code": 21211, "message": "The 'To' number +4477 is not a valid phone number.", "status": 400,
               "more_info": "https://www.twilio.com/docs/errors/21211"})
    )  # fmt: skip
    async with build_gateway("tw", twilio_raw(twilio)) as gw:
        with pytest.raises(GatewayRejected) as rejected:
            await gw.send(msg())
    assert not rejected.value.retryable and rejected.value.status == 400
    assert "Twilio error 21211: The 'To' number +4477 is not a valid phone number." in str(rejected.value)


async def test_twilio_wrong_credentials_fail_at_once_naming_the_auth_error(twilio: TwilioStub) -> None:
    async with build_gateway("tw", twilio_raw(twilio, auth_token="stale-token")) as gw:
        with pytest.raises(GatewayRejected, match="Twilio error 20003: Authenticate"):
            await gw.send(msg())


async def test_twilio_answers_map_to_retry_and_maybe_taken(twilio: TwilioStub) -> None:
    twilio.fail_next += [
        (429, {"code": 20429, "message": "Too Many Requests"}, {"Retry-After": "7"}),
        (500, b"Internal Server Error"),
        (503, b"upstream unavailable"),
        (201, {"status": "queued"}),
    ]
    async with build_gateway("tw", twilio_raw(twilio)) as gw:
        with pytest.raises(GatewayUnavailable) as busy:
            await gw.send(msg())
        assert busy.value.retryable and not busy.value.ambiguous and busy.value.retry_after == 7.0
        assert "20429" in str(busy.value)
        with pytest.raises(GatewayUnavailable) as broken:
            await gw.send(msg())
        assert broken.value.retryable and broken.value.ambiguous and broken.value.status == 500
        with pytest.raises(GatewayUnavailable) as down:
            await gw.send(msg())
        assert not down.value.ambiguous
        with pytest.raises(GatewayRejected, match="without a message sid"):
            await gw.send(msg())


async def test_twilio_timeouts_and_refused_connections(twilio: TwilioStub) -> None:
    twilio.delay = 1.0
    async with build_gateway("tw", twilio_raw(twilio, timeout="200ms")) as gw:
        with pytest.raises(GatewayTimeout) as slow:
            await gw.send(msg())
    assert slow.value.retryable and slow.value.ambiguous
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    async with build_gateway("tw", twilio_raw(twilio, base_url=closed)) as gw:
        with pytest.raises(GatewayUnavailable) as refused:
            await gw.send(msg())
    assert refused.value.retryable and not refused.value.ambiguous


# Jasmin: sending -------------------------------------------------------------------------------


async def test_jasmin_send_gsm_text_as_content_with_a_delivery_report_request(jasmin: JasminStub) -> None:
    async with build_gateway("jas", jasmin_raw(jasmin)) as gw:
        result = await gw.send(msg("Hello", sender="ACME"))
    (req,) = jasmin.received
    assert req.args == {
        "username": "parley", "password": "jpass", "to": ANN, "from": "ACME", "coding": "0", "content": "Hello",
        "dlr": "yes", "dlr-url": f"{PUBLIC}/v1/receipts/jas", "dlr-level": "3", "dlr-method": "POST",
    }  # fmt: skip
    assert result.provider_id == req.message_id


async def test_jasmin_send_ucs2_text_as_utf16_hex(jasmin: JasminStub) -> None:
    async with build_gateway("jas", jasmin_raw(jasmin, dlr=False)) as gw:
        await gw.send(msg(UNICODE, sender="ACME"))
    args = jasmin.received[0].args
    assert args["coding"] == "8" and "content" not in args
    assert args["hex-content"] == "041f04400438043204350442" + "0020" + "d83ddc4b"  # 👋 as a surrogate pair
    assert bytes.fromhex(args["hex-content"]).decode("utf-16-be") == UNICODE
    assert not {"dlr", "dlr-url", "dlr-level", "dlr-method"} & set(args)


async def test_jasmin_answers_map_to_reject_retry_and_maybe_taken(jasmin: JasminStub) -> None:
    jasmin.fail_next += [
        (412, 'Error "No route found"'),
        (403, 'Error "User throughput exceeded"'),
        (403, 'Error "Cannot charge submit_sm, check RouterPB log file for details"'),
        (500, 'Error "Cannot send submit_sm, check SMPPClientManagerPB log file for details"'),
        (200, "Queued, thanks"),
    ]
    async with build_gateway("jas", jasmin_raw(jasmin)) as gw:
        with pytest.raises(GatewayRejected, match='HTTP 412: Error "No route found"') as no_route:
            await gw.send(msg())
        assert not no_route.value.retryable
        with pytest.raises(GatewayUnavailable, match="User throughput exceeded") as throttled:
            await gw.send(msg())
        assert throttled.value.retryable and not throttled.value.ambiguous and throttled.value.status == 403
        with pytest.raises(GatewayRejected, match="Cannot charge"):
            await gw.send(msg())
        with pytest.raises(GatewayUnavailable) as broken:
            await gw.send(msg())
        assert broken.value.ambiguous
        with pytest.raises(GatewayRejected, match="Queued, thanks"):
            await gw.send(msg())


async def test_jasmin_wrong_password_is_rejected_naming_the_user(jasmin: JasminStub) -> None:
    async with build_gateway("jas", jasmin_raw(jasmin, password="guess")) as gw:
        with pytest.raises(GatewayRejected, match="Authentication failure for username:parley"):
            await gw.send(msg())


# Configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key", "message"),
    [
        ({"type": "twilio", "account_sid": SID, "auth_token": TOKEN}, "gateways.g.sender", "messaging_service_sid"),
        ({"type": "twilio", "auth_token": TOKEN, "sender": FROM}, "gateways.g.account_sid", "missing required key"),
        ({"type": "twilio", "account_sid": SID, "auth_token": TOKEN, "sender": FROM, "public_url": "sms.example.com"},
         "gateways.g.public_url", "http(s) URL"),
        ({"type": "twilio", "account_sid": SID, "auth_token": TOKEN, "sender": FROM, "status_callback": "maybe"},
         "gateways.g.status_callback", "true or false"),
        ({"type": "jasmin", "url": "http://127.0.0.1:1401", "username": "u", "password": "p", "dlr_level": 4},
         "gateways.g.dlr_level", "1 (SMSC), 2 (handset) or 3 (both)"),
        ({"type": "jasmin", "url": "http://127.0.0.1:1401", "username": "u", "password": "p", "webhook_user": "j"},
         "gateways.g.webhook_password", "together"),
        ({"type": "jasmin", "url": "http://127.0.0.1:1401", "username": "u"}, "gateways.g.password", "missing"),
        ({"type": "jasmin", "url": "127.0.0.1:1401", "username": "u", "password": "p"}, "gateways.g.url", "http(s)"),
    ],
)  # fmt: skip
def test_connector_config_errors_name_the_key(raw: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_gateway_config("g", raw)
    assert err.value.key == key and message in err.value.problem


# Webhooks through Parley's HTTP API ------------------------------------------------------------


@pytest.fixture
async def hooks(redis_url: str) -> AsyncIterator[tuple[Runtime, str]]:
    gateways = {
        "tw": {"type": "twilio", "account_sid": SID, "auth_token": TOKEN, "sender": FROM},
        "twp": {"type": "twilio", "account_sid": SID, "auth_token": TOKEN, "sender": FROM, "public_url": PUBLIC},
        "jas": {"type": "jasmin", "url": "http://127.0.0.1:9", "username": "parley", "password": "jpass",
                "webhook_user": "jasmin", "webhook_password": "hook-pw"},
        "jplain": {"type": "jasmin", "url": "http://127.0.0.1:9", "username": "parley", "password": "jpass"},
    }  # fmt: skip
    async with Runtime(make_config(redis_url, gateways=gateways), senders=False, worker=False) as rt:
        yield rt, f"http://127.0.0.1:{rt.http_port}"


async def taken(rt: Runtime) -> list[dict[str, str]]:
    """Every inbound text in the shard streams (what the worker would process)."""
    out = []
    for shard in range(rt.config.engine.shards):
        for _, fields in await rt.store.redis.xrange(keys.inbound_stream(shard)):
            out.append({k.decode(): v.decode() for k, v in fields.items()})
    return out


async def test_a_signed_twilio_text_is_taken_once_and_answered_with_empty_twiml(
    hooks: tuple[Runtime, str],
) -> None:
    rt, base = hooks
    async with TwilioStub(SID, TOKEN) as twilio:
        first = await twilio.text_in(f"{base}/v1/inbound/tw", ANN, FROM, UNICODE, sid="SM" + "a" * 32)
        again = await twilio.text_in(f"{base}/v1/inbound/tw", ANN, FROM, UNICODE, sid="SM" + "a" * 32)
    for answer in (first, again):
        assert answer.status == 200
        assert answer.body == b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
        assert answer.headers["Content-Type"].startswith("text/xml")
    (text,) = await taken(rt)
    assert (text["c"], text["to"], text["x"], text["i"], text["g"]) == (
        ANN,
        FROM,
        UNICODE,
        "SM" + "a" * 32,
        "tw",
    )


async def test_twilio_signatures_are_checked_against_public_url_behind_a_proxy(
    hooks: tuple[Runtime, str],
) -> None:
    rt, base = hooks
    async with TwilioStub(SID, TOKEN) as twilio:
        # Twilio calls https://sms.example.com/...; the proxy hands it to Parley on loopback.
        ok = await twilio.text_in(
            f"{base}/v1/inbound/twp", ANN, FROM, "hi", signed_url=f"{PUBLIC}/v1/inbound/twp"
        )
        wrong_url = await twilio.text_in(f"{base}/v1/inbound/twp", ANN, FROM, "hi")
    assert ok.status == 200
    assert wrong_url.status == 401
    assert f"signed for {PUBLIC}/v1/inbound/twp" in _error(wrong_url.body)
    assert len(await taken(rt)) == 1


async def test_unsigned_or_forged_twilio_webhooks_get_401_naming_the_problem(
    hooks: tuple[Runtime, str],
) -> None:
    rt, base = hooks
    url = f"{base}/v1/inbound/tw"
    async with TwilioStub(SID, "not-our-token") as forger, aiohttp.ClientSession() as s:
        forged = await forger.text_in(url, ANN, FROM, "hi")
        form = forger.inbound_form(ANN, FROM, "hi")
        async with s.post(url, data=form) as r:
            missing = (r.status, _error(await r.read()))
        # The API key is no substitute for Twilio's signature.
        async with s.post(url, data=form, headers={"Authorization": f"Bearer {API_KEY}"}) as r:
            keyed = r.status
    assert forged.status == 401 and "X-Twilio-Signature does not match" in _error(forged.body)
    assert missing == (401, "missing X-Twilio-Signature header (Twilio signs every webhook)")
    assert keyed == 401
    assert await taken(rt) == []


async def test_a_tampered_twilio_body_is_refused(hooks: tuple[Runtime, str]) -> None:
    rt, base = hooks
    url = f"{base}/v1/inbound/tw"
    async with TwilioStub(SID, TOKEN) as twilio, aiohttp.ClientSession() as s:
        form = twilio.inbound_form(ANN, FROM, "STOP")
        sig = twilio_signature(TOKEN, url, form)
        async with s.post(url, data={**form, "Body": "START"}, headers={"X-Twilio-Signature": sig}) as r:
            assert r.status == 401
        async with s.post(url, data=form, headers={"X-Twilio-Signature": sig}) as r:
            assert r.status == 200
    assert [t["x"] for t in await taken(rt)] == ["STOP"]


async def test_a_signed_twilio_text_without_a_body_field_is_422_naming_it(hooks: tuple[Runtime, str]) -> None:
    _, base = hooks
    async with TwilioStub(SID, TOKEN) as twilio:
        form = twilio.inbound_form(ANN, FROM, "hi")
        del form["Body"]
        answer = await twilio.post_signed(f"{base}/v1/inbound/tw", form)
    assert answer.status == 422 and _error(answer.body) == "Body: required"


async def test_twilio_status_callbacks_park_early_receipts_and_skip_interim_statuses(
    hooks: tuple[Runtime, str],
) -> None:
    rt, base = hooks
    url = f"{base}/v1/receipts/tw"
    async with TwilioStub(SID, TOKEN) as twilio, TwilioStub(SID, "other") as forger:
        early = await twilio.status_callback(url, "SM" + "b" * 32, "undelivered", error_code="30003")
        interim = await twilio.status_callback(url, "SM" + "c" * 32, "sending")
        odd = await twilio.status_callback(url, "SM" + "d" * 32, "exploded")
        forged = await forger.status_callback(url, "SM" + "e" * 32, "delivered")
    assert (early.status, _json(early.body)) == (200, {"applied": 0, "parked": 1, "gone": 0})
    assert (interim.status, _json(interim.body)) == (200, {"applied": 0, "parked": 0, "gone": 0})
    assert odd.status == 422 and _error(odd.body).startswith("MessageStatus: unknown status 'exploded'")
    assert forged.status == 401
    parked = await rt.store.redis.get(parked_key(rt, "tw", "SM" + "b" * 32))
    assert parked is not None and parked.decode().startswith("failed|undelivered 30003|")


async def test_jasmin_mo_with_basic_auth_is_acked_and_ucs2_is_decoded(hooks: tuple[Runtime, str]) -> None:
    rt, base = hooks
    url = f"{base}/v1/inbound/jas"
    async with JasminStub() as jasmin:
        no_auth = await jasmin.text_in(url, ANN, "12345", "hi")
        jasmin.webhook_auth = ("jasmin", "guess")
        wrong = await jasmin.text_in(url, ANN, "12345", "hi")
        jasmin.webhook_auth = ("jasmin", "hook-pw")
        gsm = await jasmin.text_in(url, ANN, "12345", "Hello @ £5", message_id="mo-1")
        ucs2 = await jasmin.text_in(url, ANN, "12345", UNICODE, coding=8, message_id="mo-2")
        latin = await jasmin.text_in(url, ANN, "12345", "Grüße", coding=3, message_id="mo-3")
        repeat = await jasmin.text_in(url, ANN, "12345", UNICODE, coding=8, message_id="mo-2")
    assert no_auth.status == 401 and wrong.status == 401
    assert _error(wrong.body) == "wrong webhook user or password"
    for answer in (gsm, ucs2, latin, repeat):
        assert answer.acked, answer
    texts = sorted((t["i"], t["x"], t["to"]) for t in await taken(rt))
    assert texts == [("mo-1", "Hello @ £5", "12345"), ("mo-2", UNICODE, "12345"), ("mo-3", "Grüße", "12345")]


async def test_jasmin_mo_with_undecodable_bytes_is_taken_as_best_effort(hooks: tuple[Runtime, str]) -> None:
    rt, base = hooks
    body = urllib.parse.urlencode(
        {"id": "mo-9", "from": ANN, "to": "12345", "origin-connector": "smsc01", "coding": "8",
         "content": b"\xd8\x3d", "binary": "d83d0048"}  # a lone high surrogate, then "H"
    )  # fmt: skip
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Authorization": _basic("jasmin", "hook-pw"),
    }
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base}/v1/inbound/jas", data=body, headers=headers) as r,
    ):
        assert (r.status, await r.read()) == (200, b"ACK/Jasmin")
    (text,) = await taken(rt)
    assert text["x"] == "\ufffdH"


async def test_jasmin_dlrs_are_acked_and_recorded_with_their_state(hooks: tuple[Runtime, str]) -> None:
    rt, base = hooks
    async with JasminStub() as jasmin:
        jasmin.webhook_auth = ("jasmin", "hook-pw")
        # A send first, so the stub knows the message it reports on.
        async with build_gateway("jas", {"type": "jasmin", "url": jasmin.url, "username": "parley",
                                         "password": "jpass", "public_url": base}) as gw:  # fmt: skip
            pid = (await gw.send(msg())).provider_id
        assert jasmin.sent(pid).args["dlr-url"] == f"{base}/v1/receipts/jas"
        submitted = await jasmin.report(pid, "ESME_ROK")
        failed = await jasmin.report(pid, "UNDELIV", err="001")
        unknown = await jasmin.report(pid, "UNKNOWN")
        odd = await jasmin.report(pid, "VANISHED")
    for answer in (submitted, failed, unknown):
        assert answer.acked
    assert odd.status == 422 and "unknown status 'VANISHED'" in _error(odd.body)
    parked = await rt.store.redis.get(parked_key(rt, "jas", pid))
    assert parked is not None and parked.decode().startswith("failed|UNDELIV 001|")


async def test_jasmin_without_webhook_credentials_asks_for_the_api_key(hooks: tuple[Runtime, str]) -> None:
    _, base = hooks
    async with JasminStub() as jasmin:
        refused = await jasmin.text_in(f"{base}/v1/inbound/jplain", ANN, "12345", "hi")
    assert refused.status == 401 and "Bearer" in _error(refused.body)
    body = {"id": "mo-1", "from": ANN, "to": "12345", "content": "hi", "binary": "6869", "coding": "0"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base}/v1/inbound/jplain", data=body, headers={"Authorization": f"Bearer {API_KEY}"}) as r,
    ):
        assert (r.status, await r.read()) == (200, b"ACK/Jasmin")


# Receipt statuses, one by one ------------------------------------------------------------------


def _hook(form: dict[str, str], url: str = "http://parley/v1/receipts/g") -> Webhook:
    body = urllib.parse.urlencode(form).encode()
    return Webhook("POST", url, {"Content-Type": "application/x-www-form-urlencoded"}, body)


@pytest.mark.parametrize(
    ("status", "code", "want"),
    [
        ("delivered", "", [("delivered", "")]),
        ("undelivered", "30003", [("failed", "undelivered 30003")]),
        ("failed", "30008", [("failed", "failed 30008")]),
        ("canceled", "", [("failed", "canceled")]),
        ("sent", "", [("sent", "")]),
        ("queued", "", []),
        ("accepted", "", []),
        ("sending", "", []),
        ("scheduled", "", []),
        ("read", "", []),
    ],
)
def test_twilio_statuses_map_to_ours(status: str, code: str, want: list[tuple[str, str]]) -> None:
    gw = build_gateway("g", {"type": "twilio", "account_sid": SID, "auth_token": TOKEN, "sender": FROM})
    form = {"MessageSid": "SM1", "MessageStatus": status} | ({"ErrorCode": code} if code else {})
    assert [(r.status, r.error) for r in gw.parse_receipts(_hook(form))] == want
    assert all(r.provider_id == "SM1" for r in gw.parse_receipts(_hook(form)))


@pytest.mark.parametrize(
    ("level", "state", "err", "want"),
    [
        ("1", "ESME_ROK", "", [("sent", "")]),
        ("1", "ESME_RINVDSTADR", "", [("rejected", "ESME_RINVDSTADR")]),
        ("2", "DELIVRD", "000", [("delivered", "")]),
        ("2", "ACCEPTD", "000", [("sent", "")]),
        ("2", "EXPIRED", "000", [("expired", "EXPIRED 000")]),
        ("2", "DELETED", "000", [("failed", "DELETED 000")]),
        ("2", "UNDELIV", "013", [("failed", "UNDELIV 013")]),
        ("2", "REJECTD", "", [("rejected", "REJECTD")]),
        ("2", "UNKNOWN", "000", []),
    ],
)
def test_jasmin_states_map_to_ours(level: str, state: str, err: str, want: list[tuple[str, str]]) -> None:
    gw = build_gateway(
        "g", {"type": "jasmin", "url": "http://127.0.0.1:1401", "username": "u", "password": "p"}
    )
    form = {"id": "7b1c", "message_status": state, "level": level, "connector": "smsc01"}
    form |= {"err": err, "id_smsc": "2567", "sub": "001", "dlvrd": "000"} if level == "2" else {}
    assert [(r.status, r.error) for r in gw.parse_receipts(_hook(form))] == want


def test_receipts_without_the_id_or_status_are_422_naming_the_field() -> None:
    tw = build_gateway("g", {"type": "twilio", "account_sid": SID, "auth_token": TOKEN, "sender": FROM})
    jas = build_gateway(
        "j", {"type": "jasmin", "url": "http://127.0.0.1:1401", "username": "u", "password": "p"}
    )
    with pytest.raises(Unprocessable, match=r"^MessageSid: required"):
        tw.parse_receipts(_hook({"MessageStatus": "delivered"}))
    with pytest.raises(Unprocessable, match=r"^message_status: required"):
        jas.parse_receipts(_hook({"id": "x", "level": "1"}))


# Twilio's signature: the stub (written from the published scheme) and the connector agree ------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_name = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    params=st.dictionaries(_name, _text, min_size=1, max_size=8),
    path=st.sampled_from(["/v1/inbound/g", "/v1/receipts/g", "/v1/inbound/g?x=1&y=%20"]),
    data=st.data(),
)
def test_twilio_signatures_accept_exactly_the_signed_form(
    params: dict[str, str], path: str, data: Any
) -> None:
    gw = build_gateway("g", {"type": "twilio", "account_sid": SID, "auth_token": TOKEN, "sender": FROM})
    url = PUBLIC + path
    body = urllib.parse.urlencode(params).encode()
    headers = {"X-Twilio-Signature": twilio_signature(TOKEN, url, params)}
    gw.authenticate(Webhook("POST", url, headers, body), 0.0)
    # Change one character of one value: the signature no longer matches.
    key = data.draw(st.sampled_from(sorted(params)))
    value = params[key]
    at = data.draw(st.integers(0, len(value)))
    new = data.draw(st.characters(blacklist_categories=("Cs",)).filter(lambda c: value[at : at + 1] != c))
    tampered = {**params, key: value[:at] + new + value[at + 1 :]}
    with pytest.raises(WebhookRejected, match="does not match"):
        gw.authenticate(Webhook("POST", url, headers, urllib.parse.urlencode(tampered).encode()), 0.0)


# Helpers ---------------------------------------------------------------------------------------


def _json(body: bytes) -> Any:
    return orjson.loads(body)


def _error(body: bytes) -> str:
    return str(_json(body)["error"]["message"])


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
