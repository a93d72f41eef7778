"""The simulated SMSC against an SMPP implementation that is not ours: python-smpplib.

smpplib is a blocking socket client, so each ESME conversation runs in a worker thread
(``asyncio.to_thread``) while the simulator serves on the test's event loop. Every socket has a
short timeout: a missing answer fails the test in well under a second instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.gsm
import smpplib.smpp

from gateways.simulators.smsc import SimulatedSmsc
from gateways.smpp import pdu as p

SENDER = "447700900001"
ANN = "447700900123"
LONG_UCS2 = "Здравствуйте! Ваш заказ №4521 доставлен. Спасибо, что выбрали нас. " * 3  # 3 parts


@pytest.fixture
async def smsc() -> AsyncIterator[SimulatedSmsc]:
    async with SimulatedSmsc() as s:
        yield s


class Esme:
    """An smpplib transceiver and what it was sent (used from one thread at a time)."""

    def __init__(self, port: int, timeout: float = 0.5) -> None:
        self.c = smpplib.client.Client("127.0.0.1", port, timeout=timeout, allow_unknown_opt_params=True)
        self.resps: list[Any] = []
        self.delivers: list[Any] = []
        self.order: list[str] = []
        self.answer: list[int] = []  # deliver_sm_resp statuses to give, then ESME_ROK
        self.c.set_message_sent_handler(self._sent)
        self.c.set_message_received_handler(self._received)
        self.c.set_error_pdu_handler(lambda pdu: None)  # error submit_sm_resps reach _sent too
        self.c.connect()

    def _sent(self, pdu: Any, **kw: Any) -> None:
        self.resps.append(pdu)
        self.order.append("resp")

    def _received(self, pdu: Any, **kw: Any) -> int:
        self.delivers.append(pdu)
        self.order.append("deliver")
        return self.answer.pop(0) if self.answer else 0

    def bind(self, system_id: str = "parley", password: str = "secret") -> Any:
        return self.c.bind_transceiver(system_id=system_id, password=password)

    def submit(self, part: bytes, *, dest: str = ANN, coding: int = 0, esm: int = 0, dlr: int = 0) -> None:
        self.c.send_message(
            source_addr_ton=1, source_addr_npi=1, source_addr=SENDER, dest_addr_ton=1, dest_addr_npi=1,
            destination_addr=dest, short_message=part, data_coding=coding, esm_class=esm,
            registered_delivery=dlr,
        )  # fmt: skip

    def pump(self, until: Callable[[], bool], within: float = 2.0) -> bool:
        """Read and act on PDUs (answering deliver_sm and enquire_link) until ``until()``."""
        deadline = time.monotonic() + within
        while not until() and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                self.c.read_once(auto_send_enquire_link=False)
        return until()

    def close(self) -> None:
        with contextlib.suppress(smpplib.exceptions.ConnectionError, smpplib.exceptions.PDUError, OSError):
            self.c.unbind()
        self.c.disconnect()


async def bound(smsc: SimulatedSmsc) -> Esme:
    def go() -> Esme:
        esme = Esme(smsc.port)
        esme.bind()
        return esme

    return await asyncio.to_thread(go)


def gsm_decode(data: bytes) -> str:
    """GSM 03.38 (unpacked) by smpplib's own table, not by our codec."""
    table, out, esc = smpplib.gsm.GSM_CHARACTER_TABLE, [], False
    for b in data:
        if b == 0x1B and not esc:
            esc = True
            continue
        out.append(table[b + 0x80] if esc else table[b])
        esc = False
    return "".join(out)


def text_of(pdu: Any) -> str:
    body = pdu.short_message
    if pdu.esm_class & 0x40:
        body = body[1 + body[0] :]
    return body.decode("utf-16-be") if pdu.data_coding == 8 else gsm_decode(body)


def ids(resps: list[Any]) -> list[str]:
    return [r.message_id.decode() for r in resps]


# Binding ---------------------------------------------------------------------------------


async def test_smpplib_binds_as_transceiver_and_unbinds(smsc: SimulatedSmsc) -> None:
    esme = await bound(smsc)
    assert smsc.active_binds() == 1
    assert (smsc.binds[0].system_id, smsc.binds[0].mode, smsc.binds[0].status) == ("parley", "transceiver", 0)
    resp = await asyncio.to_thread(esme.c.unbind)
    assert resp.command == "unbind_resp"
    esme.c.disconnect()
    for _ in range(50):
        if not smsc.active_binds():
            break
        await asyncio.sleep(0.01)
    assert smsc.active_binds() == 0
    assert smsc.stats()["binds_ok"] == 1


@pytest.mark.parametrize(
    ("system_id", "password", "status"),
    [("parley", "wrong", p.ESME_RINVPASWD), ("nobody", "secret", p.ESME_RINVSYSID)],
)
async def test_smpplib_bind_with_bad_credentials_is_refused_and_closed(
    smsc: SimulatedSmsc, system_id: str, password: str, status: int
) -> None:
    def go() -> tuple[int, bool]:
        esme = Esme(smsc.port)
        try:
            with pytest.raises(smpplib.exceptions.PDUError) as err:
                esme.bind(system_id, password)
            try:
                esme.c.read_pdu()
                closed = False
            except smpplib.exceptions.ConnectionError:
                closed = True
            return err.value.args[1], closed
        finally:
            esme.c.disconnect()

    assert await asyncio.to_thread(go) == (status, True)
    assert smsc.stats()["binds_failed"] == 1


async def test_protocol_errors_are_answered_without_dropping_the_bind(smsc: SimulatedSmsc) -> None:
    reader, writer = await asyncio.open_connection(smsc.host, smsc.port)
    sm = p.ShortMessage(p.Address(SENDER), p.Address(ANN), b"hi")

    async def ask(data: bytes) -> p.Pdu:
        writer.write(data)
        return await asyncio.wait_for(p.read_pdu(reader), 1.0)

    try:
        before = await ask(p.encode_sm(p.SUBMIT_SM, 1, sm))
        assert (before.command_id, before.status) == (p.SUBMIT_SM_RESP, p.ESME_RINVBNDSTS)
        ok = await ask(p.bind(p.BIND_TRANSCEIVER, 2, system_id="parley", password="secret"))
        assert (ok.command_id, ok.status) == (p.BIND_TRANSCEIVER_RESP, p.ESME_ROK)
        again = await ask(p.bind(p.BIND_TRANSMITTER, 3, system_id="parley", password="secret"))
        assert (again.command_id, again.status) == (p.BIND_TRANSMITTER_RESP, p.ESME_RALYBND)
        unknown = await ask(p.frame(0x00000103, 0, 4, b"\x00" * 8))  # data_sm: not supported
        assert (unknown.command_id, unknown.status, unknown.seq) == (p.GENERIC_NACK, p.ESME_RINVCMDID, 4)
        cut = p.encode_sm(p.SUBMIT_SM, 5, sm)[:-3]  # short_message announced longer than it is
        malformed = await ask(p.frame(p.SUBMIT_SM, 0, 5, cut[16:]))
        assert (malformed.command_id, malformed.status, malformed.seq) == (
            p.GENERIC_NACK,
            p.ESME_RINVMSGLEN,
            5,
        )
        alive = await ask(p.enquire_link(6))
        assert (alive.command_id, alive.seq) == (p.ENQUIRE_LINK_RESP, 6)
        bye = await ask(p.unbind(7))
        assert bye.command_id == p.UNBIND_RESP
        assert await reader.read() == b""  # then it closes
    finally:
        writer.close()


# Submitting ------------------------------------------------------------------------------


async def test_gsm_and_long_ucs2_texts_from_smpplib_are_reassembled_whole(smsc: SimulatedSmsc) -> None:
    esme = await bound(smsc)
    short = "Hello from smpplib @ £5, see you!"

    def go() -> None:
        parts, coding, esm = smpplib.gsm.make_parts(short)
        esme.submit(parts[0], coding=coding, esm=esm)
        parts, coding, esm = smpplib.gsm.make_parts(LONG_UCS2)
        assert coding == 8 and esm == 0x40 and len(parts) == 3
        for part in parts:
            esme.submit(part, dest="447700900999", coding=coding, esm=esm)
        assert esme.pump(lambda: len(esme.resps) == 4)

    try:
        await asyncio.to_thread(go)
        first = await smsc.next_message(ANN, timeout=1)
        second = await smsc.next_message("447700900999", timeout=1)
    finally:
        await asyncio.to_thread(esme.close)
    assert first.text == short
    assert second.text == LONG_UCS2
    assert [r.status for r in esme.resps] == [0] * 4
    assert [first.ids[0], *second.ids] == ids(esme.resps)
    assert re.fullmatch(r"[0-9a-f]+", first.ids[0])
    assert [s.concat.seq for s in smsc.received[1:] if s.concat] == [1, 2, 3]


@pytest.mark.parametrize(("stat", "state"), [("DELIVRD", 2), ("UNDELIV", 5)])
async def test_receipt_follows_the_submit_sm_resp_with_the_same_id(
    smsc: SimulatedSmsc, stat: str, state: int
) -> None:
    smsc.behaviour.dlr_stat_for = {ANN: stat}
    esme = await bound(smsc)

    def go() -> None:
        esme.submit(b"Your code is 1234", dlr=1)
        assert esme.pump(lambda: bool(esme.delivers))
        esme.close()

    await asyncio.to_thread(go)
    (resp,), (receipt,) = esme.resps, esme.delivers
    mid = resp.message_id.decode()
    assert esme.order == ["resp", "deliver"]
    assert receipt.esm_class == 0x04
    assert receipt.receipted_message_id.decode() == mid
    assert receipt.message_state == state
    assert (receipt.source_addr.decode(), receipt.destination_addr.decode()) == (ANN, SENDER)
    text = receipt.short_message.decode()
    assert re.fullmatch(
        rf"id:{mid} sub:001 dlvrd:00[01] submit date:\d{{10}} done date:\d{{10}} stat:{stat} err:\d{{3}} "
        r"text:Your code is 1234",
        text,
    )
    assert smsc.stats()["receipts_sent"] == 1


async def test_dlr_before_resp_sends_the_receipt_first_with_a_decimal_id(smsc: SimulatedSmsc) -> None:
    smsc.behaviour.dlr_before_resp = True
    smsc.behaviour.dlr_id_format = "decimal"
    esme = await bound(smsc)

    def go() -> None:
        esme.submit(b"fast", dlr=1)
        assert esme.pump(lambda: bool(esme.delivers and esme.resps))
        esme.close()

    await asyncio.to_thread(go)
    assert esme.order == ["deliver", "resp"]
    hex_id = esme.resps[0].message_id.decode()
    assert re.fullmatch(r"[0-9a-f]+", hex_id) and re.search(r"[a-f]", hex_id)
    assert esme.delivers[0].receipted_message_id.decode() == str(int(hex_id, 16))
    assert esme.delivers[0].short_message.startswith(f"id:{int(hex_id, 16)} ".encode())


async def test_a_receipt_answered_with_an_error_is_sent_once_more(smsc: SimulatedSmsc) -> None:
    smsc.behaviour.dlr_retry_delay = 0.05
    esme = await bound(smsc)
    esme.answer = [p.ESME_RX_T_APPN]

    def go() -> None:
        esme.submit(b"retry me", dlr=1)
        assert esme.pump(lambda: len(esme.delivers) == 2)
        esme.pump(lambda: False, within=0.2)  # no third one
        esme.close()

    await asyncio.to_thread(go)
    assert len(esme.delivers) == 2
    assert esme.delivers[0].receipted_message_id == esme.delivers[1].receipted_message_id
    assert (smsc.stats()["receipts_sent"], smsc.stats()["receipts_resent"]) == (2, 1)


# MO --------------------------------------------------------------------------------------


async def test_injected_mo_reaches_smpplib_decoded(smsc: SimulatedSmsc) -> None:
    smsc.behaviour.parts_in_order = False
    esme = await bound(smsc)
    gsm_text = "Hi! Price {EUR} €5 & ~ok~ [yes]"  # extension-table characters: ESC pairs
    pumping = asyncio.create_task(asyncio.to_thread(esme.pump, lambda: len(esme.delivers) == 4, 3.0))
    try:
        assert await smsc.deliver(ANN, "12345", gsm_text) == [0]
        assert await smsc.deliver(ANN, "12345", LONG_UCS2, ref=77) == [0, 0, 0]
        assert await pumping
    finally:
        await asyncio.to_thread(esme.close)
    first, *parts = esme.delivers
    assert (first.data_coding, text_of(first)) == (0, gsm_text)
    assert (first.source_addr.decode(), first.destination_addr.decode()) == (ANN, "12345")
    udh = [pdu.short_message[:6] for pdu in parts]
    assert udh == [bytes((5, 0, 3, 77, 3, seq)) for seq in (3, 2, 1)]  # parts_in_order=False
    assert "".join(text_of(pdu) for pdu in reversed(parts)) == LONG_UCS2
    assert smsc.stats()["mo_sent"] == 4


async def test_deliver_without_a_receiver_bind_times_out(smsc: SimulatedSmsc) -> None:
    smsc.behaviour.credentials["other"] = "pw"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(smsc.deliver(ANN, "12345", "hi", system_id="other"), 0.3)


# Modes -----------------------------------------------------------------------------------


async def test_throttling_answers_rthrottled_above_max_rate(smsc: SimulatedSmsc) -> None:
    smsc.behaviour.mode, smsc.behaviour.max_rate = "throttling", 3
    esme = await bound(smsc)

    def go() -> None:
        for i in range(6):
            esme.submit(b"burst %d" % i)
        assert esme.pump(lambda: len(esme.resps) == 6)
        esme.close()

    await asyncio.to_thread(go)
    statuses = [r.status for r in esme.resps]
    assert sorted(statuses) == [0, 0, 0, p.ESME_RTHROTTLED, p.ESME_RTHROTTLED, p.ESME_RTHROTTLED]
    assert all(r.message_id is None for r in esme.resps if r.status)
    assert (smsc.stats()["accepted"], smsc.stats()["throttled"]) == (3, 3)
    assert len(smsc.messages()) == 3


async def test_erroring_answers_the_configured_status(smsc: SimulatedSmsc) -> None:
    smsc.behaviour.mode, smsc.behaviour.error_mix = "erroring", {p.ESME_RMSGQFUL: 1.0}
    esme = await bound(smsc)

    def go() -> None:
        esme.submit(b"one", dlr=1)
        esme.submit(b"two")
        assert esme.pump(lambda: len(esme.resps) == 2)
        esme.pump(lambda: False, within=0.15)  # and no receipt for a refused message
        esme.close()

    await asyncio.to_thread(go)
    assert [r.status for r in esme.resps] == [p.ESME_RMSGQFUL] * 2
    assert not esme.delivers
    assert [s.status for s in smsc.received] == [p.ESME_RMSGQFUL] * 2
    assert [s.message_id for s in smsc.received] == ["", ""]
    assert smsc.stats()["errors"] == 2


async def test_disconnecting_drops_the_connection_and_a_reconnect_works(smsc: SimulatedSmsc) -> None:
    smsc.behaviour.mode, smsc.behaviour.drop_probability = "disconnecting", 1.0
    esme = await bound(smsc)

    def dropped() -> None:
        esme.submit(b"lost")
        with pytest.raises(smpplib.exceptions.ConnectionError):
            esme.pump(lambda: False)
        esme.c.disconnect()

    await asyncio.to_thread(dropped)
    assert smsc.stats()["dropped"] == 1
    assert smsc.received[0].status is None
    smsc.behaviour.mode = "happy"
    again = await bound(smsc)

    def works() -> None:
        again.submit(b"found")
        assert again.pump(lambda: bool(again.resps))
        again.close()

    await asyncio.to_thread(works)
    assert again.resps[0].status == 0
    assert [m.text for m in smsc.messages()] == ["found"]


async def test_no_response_never_answers_submit_but_answers_enquire_link(smsc: SimulatedSmsc) -> None:
    smsc.behaviour.mode = "no-response"
    esme = await bound(smsc)

    def go() -> tuple[bool, str, bool]:
        esme.submit(b"into the void")
        answered = esme.pump(lambda: bool(esme.resps), within=0.3)
        esme.c.send_pdu(smpplib.smpp.make_pdu("enquire_link", client=esme.c))
        link = esme.c.read_pdu().command
        smsc.behaviour.answer_enquire_link = False
        esme.c.send_pdu(smpplib.smpp.make_pdu("enquire_link", client=esme.c))
        try:
            esme.c.read_pdu()
            silent = False
        except TimeoutError:
            silent = True
        esme.c.disconnect()
        return answered, link, silent

    assert await asyncio.to_thread(go) == (False, "enquire_link_resp", True)
    assert smsc.received[0].status is None and smsc.stats()["enquire_links_answered"] == 1


async def test_slow_mode_answers_after_the_latency(smsc: SimulatedSmsc) -> None:
    smsc.behaviour.mode, smsc.behaviour.latency = "slow", 0.2
    esme = await bound(smsc)

    def go() -> float:
        t0 = time.monotonic()
        esme.submit(b"slowly")
        assert esme.pump(lambda: bool(esme.resps))
        took = time.monotonic() - t0
        esme.close()
        return took

    assert 0.2 <= await asyncio.to_thread(go) < 1.0
    sub = smsc.received[0]
    assert sub.answered_at is not None and sub.answered_at - sub.at >= 0.2


async def test_smsc_enquire_link_is_answered_and_drop_all_disconnects(smsc: SimulatedSmsc) -> None:
    smsc.behaviour.enquire_interval = 0.1
    esme = await bound(smsc)
    await asyncio.to_thread(esme.pump, lambda: smsc.stats()["enquire_links_sent"] >= 2, 1.5)
    assert smsc.enquire_results and all(answered for _, _, answered in smsc.enquire_results)
    smsc.behaviour.enquire_interval = 0
    await smsc.drop_all()
    assert smsc.active_binds() == 0

    def closed() -> None:
        with pytest.raises(smpplib.exceptions.ConnectionError):
            esme.pump(lambda: False, within=0.5)
        esme.c.disconnect()

    await asyncio.to_thread(closed)


async def test_http_control_endpoint() -> None:
    async with SimulatedSmsc(control_port=0) as smsc, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{smsc.control_port}"
        esme = await bound(smsc)
        pumping = asyncio.create_task(asyncio.to_thread(esme.pump, lambda: len(esme.delivers) == 1))
        async with http.post(f"{base}/mo", json={"from": ANN, "to": "12345", "text": "STOP"}) as r:
            assert (r.status, await r.json()) == (200, {"statuses": [0]})
        assert await pumping
        await asyncio.to_thread(esme.submit, b"hello")
        await asyncio.to_thread(esme.pump, lambda: bool(esme.resps))
        async with http.get(f"{base}/received") as r:
            (got,) = await r.json()
        assert (got["dest"], got["text"], got["ids"]) == (ANN, "hello", ids(esme.resps))
        async with http.post(f"{base}/behaviour", json={"mode": "erroring", "error_mix": {"0x58": 1.0}}) as r:
            assert r.status == 200
        assert smsc.behaviour.mode == "erroring" and smsc.behaviour.error_mix == {0x58: 1.0}
        async with http.post(f"{base}/behaviour", json={"mood": "grumpy"}) as r:
            assert r.status == 400
        async with http.get(f"{base}/stats") as r:
            stats = await r.json()
        assert (stats["mo_sent"], stats["accepted"], stats["binds_ok"]) == (1, 1, 1)
        await asyncio.to_thread(esme.close)


# The command -------------------------------------------------------------------------------


def test_parley_smsc_sim_command_serves_binds_and_prints_stats() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    cmd = [
        sys.executable,
        "-m",
        "engine.app.cli",
        "smsc-sim",
        "--port",
        "0",
        "--duration",
        "1.5",
        "--system-id",
        "demo",
    ]
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None and proc.stdout is not None
        banner = proc.stderr.readline()
        while "listening" not in banner and proc.poll() is None:
            banner = proc.stderr.readline()
        match = re.search(r"smpp://127\.0\.0\.1:(\d+)", banner)
        assert match, banner
        esme = Esme(int(match.group(1)))
        try:
            esme.bind("demo", "secret")
            esme.submit(b"Hello CLI")
            assert esme.pump(lambda: bool(esme.resps))
        finally:
            esme.close()
        out, err = proc.communicate(timeout=5)
    assert proc.returncode == 0, err
    assert "bind transceiver as 'demo': ESME_ROK" in out
    assert re.search(r"message to 447700900123 \(answered in \d+\.\d ms\): 'Hello CLI'", out)
    assert re.search(r"stats: binds_ok=1 .*submits=1 accepted=1", out)
    assert "Traceback" not in err
