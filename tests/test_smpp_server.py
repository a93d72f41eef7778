"""ESMEs binding into Parley (gateways/smpp/server.py) with software we did not write: python
smpplib and node-smpp, over real TCP (and TLS) on loopback, with a real Redis, and Parley's own
SMPP connector sending what they submit to the simulated SMSC, whose receipts come back to the
ESME as deliver_sm."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import smpplib.exceptions
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core import keys
from engine.core.config import load_config
from engine.core.errors import ConfigError
from engine.core.passwords import hash_password
from gateways.simulators.smsc import SimulatedSmsc, SmscBehaviour
from gateways.smpp import pdu
from gateways.smpp.server import SmppServer
from gateways.smpp.server_pdu import smpp_time
from tests.conftest import ROOT, eventually
from tests.smpp_esme import Esme, status_of
from tests.test_sender import Engine, engine
from tests.test_smpp_gateway import bound, smpp_gw

HASH = hash_password("secret")
ANN = "447700900123"  # as ESMEs write it: TON international, no "+"
PEER = ROOT / "tests/peers/node_smsc"


def account(**extra: Any) -> dict[str, Any]:
    a: dict[str, Any] = {
        "system_id": "acme", "password_hash": HASH, "sources": ["ACME", "4477009*"], "numbers": ["12345"],
        "max_binds": 3, "throughput": 200, "window": 16,
    }  # fmt: skip
    a.update(extra)
    return a


def server_section(tls: dict[str, str] | None = None, **acct: Any) -> dict[str, Any]:
    return {
        "listen": "127.0.0.1:0", "accounts": [account(**acct)], "redeliver_after": "2s",
        "response_timeout": "1s", "enquire_link": "30s", "tls": tls or {},
    }  # fmt: skip


@contextlib.asynccontextmanager
async def parley(redis_url: str, tmp_path: Path, smsc: SimulatedSmsc, **server: Any) -> AsyncIterator[Engine]:
    agen = engine(redis_url, tmp_path, {"smsc": smpp_gw(smsc)}, smpp_server=server_section(**server))
    e = await agen.__anext__()
    try:
        await bound(e.rt)
        yield e
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await agen.__anext__()


def port(e: Engine) -> int:
    assert e.rt.smpp_server is not None
    return e.rt.smpp_server.port


@pytest.fixture
async def smsc() -> AsyncIterator[SimulatedSmsc]:
    async with SimulatedSmsc(behaviour=SmscBehaviour(dlr_delay=0.05)) as s:
        yield s


@pytest.fixture
async def e(redis_url: str, tmp_path: Path, smsc: SimulatedSmsc) -> AsyncIterator[Engine]:
    async with parley(redis_url, tmp_path, smsc) as x:
        yield x


# Binding -------------------------------------------------------------------------------------


@pytest.mark.redis_modes
async def test_an_esme_submits_and_gets_its_message_id_the_message_and_its_receipt(
    e: Engine, smsc: SimulatedSmsc
) -> None:
    esme = await Esme.bind(port(e))
    status, mid = await esme.submit(ANN, "Your parcel arrives today")
    assert status == pdu.ESME_ROK and mid.startswith("msg-")
    sent = await smsc.next_message(ANN)
    assert sent.text == "Your parcel arrives today"
    receipt = await esme.next_delivered()
    assert receipt.esm_class == 0x04 and receipt.receipted_message_id == mid and receipt.message_state == 2
    assert (
        receipt.text.startswith(f"id:{mid} sub:001 dlvrd:001 submit date:")
        and " stat:DELIVRD err:000 " in receipt.text
    )
    assert receipt.source == ANN and receipt.dest == "ACME"
    async with e.api.get(f"/v1/messages/{mid}") as r:
        assert (await r.json())["status"] == "delivered"
    await esme.unbind()


@pytest.mark.parametrize(
    ("keep", "source", "sent_from", "ton"),
    [
        (True, "ACME", "ACME", 5),  # alphanumeric: TON 5
        (True, "447700900999", "447700900999", 1),  # a number the account may use: international
        (False, "ACME", "12345", None),  # the connector's own sender
    ],
)
async def test_the_carrier_sees_the_esmes_source_address_when_its_account_keeps_it(
    redis_url: str,
    tmp_path: Path,
    smsc: SimulatedSmsc,
    keep: bool,
    source: str,
    sent_from: str,
    ton: int | None,
) -> None:
    async with parley(redis_url, tmp_path, smsc, keep_source=keep) as x:
        esme = await Esme.bind(port(x))
        try:
            assert (await esme.submit(ANN, "from us", source=source))[0] == pdu.ESME_ROK
            assert (await smsc.next_message(ANN)).text == "from us"
            (got,) = [sub for sub in smsc.received if sub.text == "from us"]
            assert got.source == sent_from
            if ton is not None:
                assert got.source_ton == ton
            receipt = await esme.next_delivered()  # the receipt still names what the ESME sent
            assert receipt.dest == source
        finally:
            await esme.unbind()


@pytest.mark.parametrize(
    ("system_id", "password", "mode", "status"),
    [
        ("acme", "wrong", "transceiver", pdu.ESME_RINVPASWD),
        ("nobody", "secret", "transceiver", pdu.ESME_RINVSYSID),
        ("acme", "secret", "receiver", pdu.ESME_RBINDFAIL),  # bind_types below: no receiver
    ],
)
async def test_a_bind_is_refused_with_the_precise_status(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc, system_id: str, password: str, mode: str, status: int
) -> None:
    async with parley(redis_url, tmp_path, smsc, bind_types=["transceiver", "transmitter"]) as x:
        with pytest.raises(smpplib.exceptions.PDUError) as refused:
            await Esme.bind(port(x), mode, system_id, password)
        assert status_of(refused.value) == status


async def test_a_receiver_bind_cannot_submit_and_a_second_bind_on_one_connection_is_refused(
    e: Engine,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port(e))
    writer.write(pdu.bind(pdu.BIND_RECEIVER, 1, system_id="acme", password="secret"))
    assert (await pdu.read_pdu(reader)).status == pdu.ESME_ROK
    writer.write(pdu.bind(pdu.BIND_TRANSCEIVER, 2, system_id="acme", password="secret"))
    assert (await pdu.read_pdu(reader)).status == pdu.ESME_RALYBND
    from gateways.smpp.pdu import Address, ShortMessage

    writer.write(pdu.encode_sm(pdu.SUBMIT_SM, 3, ShortMessage(Address("ACME", 5, 0), Address(ANN), b"hi")))
    resp = await pdu.read_pdu(reader)
    assert (resp.command_id, resp.status) == (pdu.SUBMIT_SM_RESP, pdu.ESME_RINVBNDSTS)
    writer.close()


async def test_unknown_commands_get_generic_nack_and_enquire_link_both_ways(e: Engine) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port(e))
    writer.write(pdu.bind(pdu.BIND_TRANSMITTER, 1, system_id="acme", password="secret"))
    assert (await pdu.read_pdu(reader)).status == pdu.ESME_ROK
    writer.write(pdu.frame(0x00000099, 0, 7))
    nack = await pdu.read_pdu(reader)
    assert (nack.command_id, nack.status, nack.seq) == (pdu.GENERIC_NACK, pdu.ESME_RINVCMDID, 7)
    writer.write(pdu.enquire_link(8))
    resp = await pdu.read_pdu(reader)
    assert (resp.command_id, resp.seq) == (pdu.ENQUIRE_LINK_RESP, 8)
    writer.write(pdu.frame(pdu.SUBMIT_SM, 0, 9, b"\x00\x05"))  # a body cut short
    bad = await pdu.read_pdu(reader)
    assert (bad.command_id, bad.status, bad.seq) == (pdu.GENERIC_NACK, pdu.ESME_RINVMSGLEN, 9)
    writer.write(b"\x00\x10\x00\x00" + pdu.HEADER.pack(0, pdu.ENQUIRE_LINK, 0, 10)[4:])  # 1 MiB announced
    too_long = await pdu.read_pdu(reader)
    assert (too_long.command_id, too_long.status) == (pdu.GENERIC_NACK, pdu.ESME_RINVCMDLEN)
    assert await reader.read() == b""  # and the connection is closed: the stream is lost
    writer.close()


async def test_the_server_asks_an_idle_esme_enquire_link_and_drops_one_that_does_not_answer(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc
) -> None:
    agen = engine(redis_url, tmp_path, {"smsc": smpp_gw(smsc)},
                  smpp_server={**server_section(), "enquire_link": "200ms", "response_timeout": "300ms"})  # fmt: skip
    x = await agen.__anext__()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port(x))
        writer.write(pdu.bind(pdu.BIND_TRANSMITTER, 1, system_id="acme", password="secret"))
        assert (await pdu.read_pdu(reader)).status == pdu.ESME_ROK
        asked = await asyncio.wait_for(pdu.read_pdu(reader), 2)
        assert asked.command_id == pdu.ENQUIRE_LINK
        writer.write(pdu.enquire_link_resp(asked.seq))
        again = await asyncio.wait_for(pdu.read_pdu(reader), 2)
        assert again.command_id == pdu.ENQUIRE_LINK  # not answered this time:
        assert await asyncio.wait_for(reader.read(), 2) == b""  # dropped
        writer.close()
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await agen.__anext__()


@pytest.mark.parametrize(
    ("to", "source", "extra", "status"),
    [
        ("12", "ACME", {}, pdu.ESME_RINVDSTADR),
        (ANN, "OTHER", {}, pdu.ESME_RINVSRCADR),
        (ANN, "ACME", {"data_coding": 0x05}, 0x104),  # ESME_RINVDCS
        (ANN, "ACME", {"validity_period": "nonsense"}, 0x62),  # ESME_RINVEXPIRY
        (ANN, "ACME", {"esm_class": 0x04}, 0x43),  # ESME_RINVESMCLASS: a receipt is not a message
    ],
)
async def test_bad_fields_are_refused_with_their_status_and_nothing_is_sent(
    e: Engine, smsc: SimulatedSmsc, to: str, source: str, extra: dict[str, Any], status: int
) -> None:
    esme = await Esme.bind(port(e))
    assert (await esme.submit(to, "hi", source=source, **extra))[0] == status
    assert (await esme.submit(ANN, "still bound"))[0] == pdu.ESME_ROK
    assert (await smsc.next_message(ANN)).text == "still bound"
    await esme.unbind()


async def test_a_long_message_in_udh_parts_is_sent_whole_with_one_id_and_one_receipt(
    e: Engine, smsc: SimulatedSmsc
) -> None:
    esme = await Esme.bind(port(e))
    text = "Your parcel A-1042 is on its way. " * 6
    parts = [text[i : i + 153] for i in range(0, len(text), 153)]
    ids = []
    for seq, part in enumerate(parts, 1):
        udh = bytes((5, 0, 3, 0x42, len(parts), seq))
        status, mid = await esme.submit_raw(ANN, udh + part.encode(), esm_class=0x40)
        assert status == pdu.ESME_ROK
        ids.append(mid)
    assert len(set(ids)) == 1
    assert (await smsc.next_message(ANN)).text == text
    receipt = await esme.next_delivered()
    assert receipt.receipted_message_id == ids[0]
    await esme.unbind()


def _addr(addr: str, ton: int = 1, npi: int = 1) -> bytes:
    return bytes((ton, npi)) + addr.encode() + b"\x00"


async def test_data_sm_and_submit_multi_are_sent_like_submit_sm(e: Engine, smsc: SimulatedSmsc) -> None:
    from gateways.smpp.server_pdu import DATA_SM, DATA_SM_RESP, SUBMIT_MULTI, SUBMIT_MULTI_RESP

    reader, writer = await asyncio.open_connection("127.0.0.1", port(e))
    writer.write(pdu.bind(pdu.BIND_TRANSCEIVER, 1, system_id="acme", password="secret"))
    assert (await pdu.read_pdu(reader)).status == pdu.ESME_ROK
    text = b"From data_sm, in message_payload"
    body = b"\x00" + _addr("ACME", 5, 0) + _addr(ANN) + bytes((0, 1, 1))  # data_coding 1: ASCII
    body += pdu.TAG_MESSAGE_PAYLOAD.to_bytes(2, "big") + len(text).to_bytes(2, "big") + text
    writer.write(pdu.frame(DATA_SM, 0, 2, body))
    resp = await pdu.read_pdu(reader)
    assert (resp.command_id, resp.status) == (DATA_SM_RESP, pdu.ESME_ROK)
    assert (await smsc.next_message(ANN)).text == text.decode()
    bea = "447700900456"
    sm = b"To both of you"
    body = b"\x00" + _addr("ACME", 5, 0) + b"\x02" + b"\x01" + _addr(ANN) + b"\x01" + _addr(bea)
    body += bytes((0, 0, 0)) + b"\x00\x00" + bytes((0, 0, 0, 0, len(sm))) + sm
    writer.write(pdu.frame(SUBMIT_MULTI, 0, 3, body))
    resp = await pdu.read_pdu(reader)
    assert (resp.command_id, resp.status) == (SUBMIT_MULTI_RESP, pdu.ESME_ROK)
    assert resp.body.startswith(b"msg-") and resp.body.endswith(b"\x00\x00")  # id, no_unsuccess 0
    assert {(await smsc.next_message(n)).text for n in (ANN, bea)} == {sm.decode()}
    writer.write(pdu.unbind(4))
    writer.close()


@settings(max_examples=50, deadline=None)
@given(
    mid=st.from_regex(r"msg-[0-9]{1,2}-[0-9]{13}-[0-9a-f]{8}", fullmatch=True),
    status=st.sampled_from(["delivered", "failed", "expired", "rejected", "blocked", "cancelled"]),
    text=st.text(max_size=40),
)
def test_a_receipt_reads_back_as_the_status_it_reports(mid: str, status: str, text: str) -> None:
    from gateways.smpp import dlr
    from gateways.smpp.server_pdu import receipt_text, receipt_tlvs

    body = receipt_text(mid, status, 1_767_225_600_000, 1_767_225_660_000, text, "000")
    got = dlr.receipt_from(body.encode("ascii", "replace").decode("ascii"), dict(receipt_tlvs(mid, status)))
    assert got is not None and got.smsc_id == mid
    assert got.status == {"blocked": "rejected", "cancelled": "failed"}.get(status, status)


# Throughput and binds, global ----------------------------------------------------------------


async def test_submits_above_the_accounts_throughput_are_throttled(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc
) -> None:
    async with parley(redis_url, tmp_path, smsc, throughput=5) as x:
        esme = await Esme.bind(port(x))
        statuses = [(await esme.submit(ANN, f"n{i}", rd=0))[0] for i in range(12)]
        assert statuses.count(pdu.ESME_ROK) <= 6 and statuses.count(pdu.ESME_RTHROTTLED) >= 6
        assert set(statuses) == {pdu.ESME_ROK, pdu.ESME_RTHROTTLED}
        await esme.unbind()


async def test_max_binds_hold_across_two_server_instances(e: Engine) -> None:
    assert e.rt.smpp_server is not None
    async with SmppServer(e.rt, e.rt.config.smpp_server) as other:
        first = [await Esme.bind(port(e)), await Esme.bind(other.port), await Esme.bind(other.port)]
        for p in (port(e), other.port):
            with pytest.raises(smpplib.exceptions.PDUError) as refused:
                await Esme.bind(p)
            assert status_of(refused.value) == pdu.ESME_RBINDFAIL
        await first[0].unbind()

        async def rebinds() -> Esme | None:
            with contextlib.suppress(smpplib.exceptions.PDUError):
                return await Esme.bind(other.port)
            return None

        again = await eventually(rebinds, attempts=50, interval=0.05)
        for esme in (*first[1:], again):
            await esme.unbind()


# Receipts and MOs wait for the ESME -----------------------------------------------------------


@pytest.mark.redis_modes
async def test_receipts_wait_while_the_esme_is_away_and_come_after_it_binds_again(
    e: Engine, smsc: SimulatedSmsc, redis_url: str
) -> None:
    smsc.behaviour.dlr_delay = 0.3
    esme = await Esme.bind(port(e), "transmitter")
    mids = [(await esme.submit(ANN, f"away {i}"))[1] for i in range(3)]
    await esme.unbind()
    queue = keys.smpp_server_queue("acme")
    await eventually(lambda: _xlen(e, queue, 3), attempts=600, interval=0.02)
    back = await Esme.bind(port(e), "receiver")
    got = sorted([(await back.next_delivered()).receipted_message_id for _ in mids])
    assert got == sorted(mids)
    await eventually(lambda: _xlen(e, queue, 0), attempts=200, interval=0.02)  # gone once answered
    await back.unbind()


async def test_a_scheduled_message_cancelled_through_the_api_reaches_the_esme_as_deleted(
    e: Engine, smsc: SimulatedSmsc
) -> None:
    """An operator cancels an ESME's message before it is due (DELETE /v1/messages/{id}): the
    ESME asked for a receipt, so it hears of it (stat DELETED), and the carrier never sees it."""
    esme = await Esme.bind(port(e))
    status, mid = await esme.submit(ANN, "tomorrow's offer", schedule_delivery_time="000001000000000R")
    assert status == pdu.ESME_ROK
    async with e.api.delete(f"/v1/messages/{mid}") as r:
        assert r.status == 200, await r.text()
    receipt = await esme.next_delivered()
    assert receipt.receipted_message_id == mid and " stat:DELETED " in receipt.text
    assert not smsc.received
    await esme.unbind()


async def test_a_receipt_the_esme_refuses_for_now_is_offered_again(e: Engine, smsc: SimulatedSmsc) -> None:
    esme = await Esme.bind(port(e))
    esme.answer = pdu.ESME_RX_T_APPN
    _, mid = await esme.submit(ANN, "try again")
    first = await esme.next_delivered()
    esme.answer = pdu.ESME_ROK
    second = await esme.next_delivered()
    assert first.receipted_message_id == second.receipted_message_id == mid
    await esme.unbind()


async def test_an_mo_to_a_number_the_account_owns_arrives_as_deliver_sm(
    e: Engine, smsc: SimulatedSmsc
) -> None:
    esme = await Esme.bind(port(e), "receiver")
    assert await smsc.deliver(ANN, "12345", "Where is my parcel?") == [pdu.ESME_ROK]
    mo = await esme.next_delivered()
    assert (mo.esm_class, mo.source, mo.dest, mo.text) == (0, ANN, "12345", "Where is my parcel?")
    await esme.unbind()


async def _xlen(e: Engine, key: str, n: int) -> bool:
    return int(await e.rt.store.redis.xlen(key)) == n


# TLS and node-smpp ---------------------------------------------------------------------------


def make_cert(tmp_path: Path) -> tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


async def test_smpplib_binds_over_tls_and_gets_its_receipt(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc
) -> None:
    cert, key = make_cert(tmp_path)
    async with parley(redis_url, tmp_path, smsc, tls={"cert": cert, "key": key}) as x:
        with pytest.raises((ConnectionError, OSError, smpplib.exceptions.ConnectionError)):
            plain = await Esme.bind(port(x))  # plain TCP to a TLS port: no bind
            await plain.drop()
        ctx = ssl.create_default_context(cafile=cert)
        ctx.check_hostname = False  # smpplib wraps the socket without a server name
        esme = await Esme.bind(port(x), ssl_context=ctx)
        status, mid = await esme.submit(ANN, "over TLS")
        assert status == pdu.ESME_ROK
        assert (await esme.next_delivered()).receipted_message_id == mid
        await esme.unbind()


def _node_modules() -> Path:
    """node-smpp, installed by ``make peers`` (PARLEY_NODE_MODULES: another checkout's)."""
    where = Path(os.environ.get("PARLEY_NODE_MODULES", PEER / "node_modules"))
    if shutil.which("node") is None or not (where / "smpp").is_dir():
        pytest.fail("node-smpp is not installed: run `make peers` (npm ci in tests/peers/node_smsc)")
    return where


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_node_smpp_binds_submits_and_gets_its_receipt(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc, tls: bool
) -> None:
    modules = _node_modules()
    cert, key = make_cert(tmp_path) if tls else ("", "")
    async with parley(redis_url, tmp_path, smsc, tls={"cert": cert, "key": key} if tls else None) as x:
        args = ["--port", str(port(x)), "--to", ANN] + (["--tls", "1", "--ca", cert] if tls else [])
        proc = await asyncio.create_subprocess_exec(
            "node", str(PEER / "esme.js"), *args, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "NODE_PATH": str(modules)},
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        lines = [orjson.loads(line) for line in out.splitlines()]
        assert proc.returncode == 0, lines
        steps = {k: v for line in lines for k, v in line.items()}
        assert steps["bind"] == 0 and steps["submit"]["status"] == 0
        assert steps["receipt"]["id"] == steps["submit"]["id"] and steps["receipt"]["state"] == 2
        assert "stat:DELIVRD" in steps["receipt"]["text"]
        assert (await smsc.next_message(ANN)).text == "Hello from node-smpp"


# Configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"listen": "nowhere"}, "smpp_server.listen"),
        ({"tls": {"cert": "c.pem"}}, "smpp_server.tls"),
        ({"accounts": [account(password_hash="secret")]}, "smpp_server.accounts[0].password_hash"),
        ({"accounts": [account(bind_types=["both"])]}, "smpp_server.accounts[0].bind_types[0]"),
        ({"accounts": [account(mo="email")]}, "smpp_server.accounts[0].mo"),
        ({"accounts": [account(default_encoding="utf8")]}, "smpp_server.accounts[0].default_encoding"),
        ({"accounts": [account(), account()]}, "smpp_server.accounts[1].system_id"),
        ({"accounts": [account(throughput=0)]}, "smpp_server.accounts[0].throughput"),
    ],
)
def test_configuration_mistakes_name_the_key(change: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env={}, overrides={"smpp_server": {**server_section(), **change}})
    assert err.value.key == key


def test_smpp_times_absolute_and_relative() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    assert smpp_time("000000010000000R", now) == datetime(2026, 12, 7, 11, 0, tzinfo=UTC)
    assert smpp_time("261207120000004+", now) == datetime(2026, 12, 7, 11, 0, tzinfo=UTC)
    with pytest.raises(ValueError):
        smpp_time("26120712", now)


# Parley's own connector bound to Parley's server, over mutual TLS -----------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_parleys_connector_binds_to_parleys_server_over_tls_and_a_message_goes_all_the_way(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc
) -> None:
    from tests.tls_certs import make_pki

    pki = make_pki(tmp_path / "pki")
    listen = free_port()
    tls = {"cert": str(pki.server_cert), "key": str(pki.server_key), "client_ca": str(pki.ca)}
    loop = smpp_gw(
        smsc, port=listen, system_id="acme", password="secret", sender="ACME", tls=True, tls_ca=str(pki.ca),
        tls_cert=str(pki.client_cert), tls_key=str(pki.client_key),
    )  # fmt: skip
    server = {**server_section(tls), "listen": f"127.0.0.1:{listen}"}
    async for x in engine(
        redis_url, tmp_path, {"smsc": smpp_gw(smsc), "loop": loop}, smpp_server=server,
        routing=[{"match": {"prefix": "+44"}, "via": ["smsc"]}],
    ):  # fmt: skip
        await bound(x.rt)
        async with x.api.post(
            "/v1/messages", json={"to": "+" + ANN, "text": "round trip", "gateway": "loop"}
        ) as r:
            outer = (await r.json())["id"]
        # The loop connector submitted it to Parley's server, which sent it to the carrier ...
        assert (await smsc.next_message(ANN)).text == "round trip"

        async def delivered(x: Engine = x, outer: str = outer) -> dict[str, Any] | None:
            async with x.api.get(f"/v1/messages/{outer}") as r:
                got: dict[str, Any] = await r.json()
            return got if got["status"] == "delivered" else None

        # ... whose receipt came back to Parley's server, and as deliver_sm to the loop connector.
        rec = await eventually(delivered, attempts=1000, interval=0.01)
        inner = rec["provider_id"]
        assert inner.startswith("msg-") and inner != outer and rec["gateway"] == "loop"
        async with x.api.get(f"/v1/messages/{inner}") as r:
            assert (await r.json())["status"] == "delivered"
