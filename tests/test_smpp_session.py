"""One SMPP bind's reconnect back-off, against the simulated SMSC over real TCP.

The session waits out its back-off on an injected clock; here the clock records each wait and
lets it pass at once, so the test sees the exact delays the session chose (jitter included)
without sleeping through them."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from engine.core.clock import Clock
from gateways.simulators.smsc import SimulatedSmsc
from gateways.smpp import pdu
from gateways.smpp.pdu import Pdu
from gateways.smpp.session import ConnectionLost, Session, SessionSettings
from tests.conftest import eventually

DELAY, MAX, BIND_RETRY = 1.0, 60.0, 45.0


class Waits(Clock):
    """Records every back-off the session asks for and lets it pass at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0.001)


def settings(port: int, **extra: object) -> SessionSettings:
    base = SessionSettings(
        host="127.0.0.1", port=port, system_id="parley", password="secret", system_type="",
        address_range="", window=10, enquire_link=30.0, response_timeout=2.0, connect_timeout=2.0,
        reconnect_delay=DELAY, reconnect_max=MAX, bind_retry=BIND_RETRY, max_pdu=65536,
    )  # fmt: skip
    return replace(base, **extra)  # type: ignore[arg-type]


async def _ok(_s: Session, _p: Pdu) -> int:
    return pdu.ESME_ROK


@pytest.fixture
async def smsc() -> AsyncIterator[SimulatedSmsc]:
    async with SimulatedSmsc() as s:
        yield s


@pytest.fixture
async def clock() -> Waits:
    return Waits()


async def running(port: int, clock: Waits, **extra: object) -> Session:
    s = Session("smsc/0:transceiver", "transceiver", settings(port, **extra), _ok, clock=clock)
    s.start()
    return s


async def waits(clock: Waits, n: int) -> list[float]:
    async def enough() -> bool:
        return len(clock.waits) >= n

    await eventually(enough, attempts=2000)
    return clock.waits[:n]


def grows(got: list[float], first_step: int = 1) -> None:
    """Each wait is its step (DELAY doubling per failure, up to MAX) times a jitter in [0.5, 1]."""
    for k, wait in enumerate(got, start=first_step):
        step = min(MAX, DELAY * 2 ** (k - 1))
        assert 0.5 * step <= wait <= step, (k, got)


async def test_a_bind_that_answered_traffic_is_rebound_after_the_first_step_however_often_it_drops(
    smsc: SimulatedSmsc, clock: Waits
) -> None:
    """The issue's SMSC: it drops a working bind now and then. Before, the gaps grew 0.6, 1.4,
    3.3, 4.9, 9.3 s towards reconnect_max for the life of the process."""
    s = await running(smsc.port, clock)
    try:
        for drop in range(1, 7):
            await s.bound.wait()
            resp = await s.request(pdu.enquire_link)  # the bind works: the SMSC answers it
            assert resp.status == pdu.ESME_ROK
            assert smsc.kick("parley") == 1
            await waits(clock, drop)
            await eventually(functools.partial(_rebound, s, drop + 1), attempts=2000)
        assert all(0.5 * DELAY <= w <= DELAY for w in clock.waits), clock.waits
        assert smsc.stats()["binds_ok"] == 7
    finally:
        await s.close()


async def _rebound(s: Session, n: int) -> bool:
    return s.binds >= n and s.bound.is_set()


async def test_a_bind_dropped_before_it_answered_anything_backs_off(
    smsc: SimulatedSmsc, clock: Waits
) -> None:
    """An SMSC that takes the bind and hangs up at once, every time, is not hammered."""
    smsc.behaviour.drop_bind_after = 0.01  # long before the 30 s keep-alive asks anything
    s = await running(smsc.port, clock)
    try:
        grows(await waits(clock, 6))
        assert smsc.stats()["binds_dropped"] >= 6
    finally:
        await s.close()


async def test_a_submit_the_smsc_hangs_up_on_is_not_an_answer(smsc: SimulatedSmsc, clock: Waits) -> None:
    smsc.behaviour.mode, smsc.behaviour.drop_probability = "disconnecting", 1.0
    s = await running(smsc.port, clock)
    try:
        for n in range(1, 5):
            await s.bound.wait()
            with pytest.raises(ConnectionLost):
                await s.request(_submit)  # the SMSC hangs up instead of answering
            await waits(clock, n)
        grows(clock.waits[:4])
    finally:
        await s.close()


def _submit(seq: int) -> bytes:
    return pdu.encode_sm(
        pdu.SUBMIT_SM, seq, pdu.ShortMessage(pdu.Address("12345"), pdu.Address("447700900123"), b"hi", 0)
    )


async def test_no_listener_backs_off(clock: Waits) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    s = await running(port, clock)
    try:
        grows(await waits(clock, 8))  # 1, 2, 4 ... 60, 60: capped at reconnect_max
    finally:
        await s.close()


async def test_a_refused_bind_waits_bind_retry_each_time(smsc: SimulatedSmsc, clock: Waits) -> None:
    s = await running(smsc.port, clock, password="wrong")
    try:
        assert await waits(clock, 3) == [BIND_RETRY] * 3
        assert "ESME_RINVPASWD" in s.last_error and s.binds == 0
    finally:
        await s.close()


async def test_a_working_bind_after_failures_resets_the_back_off(smsc: SimulatedSmsc, clock: Waits) -> None:
    smsc.behaviour.drop_bind_after = 0.01
    s = await running(smsc.port, clock)
    try:
        grows(await waits(clock, 4))  # up to 8 s
        smsc.behaviour.drop_bind_after = 0.0
        await eventually(functools.partial(_rebound, s, 5), attempts=2000)
        assert (await s.request(pdu.enquire_link)).status == pdu.ESME_ROK
        # Dropped after it worked: the first step. The binds after it are dropped before they
        # answer anything again: the back-off grows from there, not from where it was.
        smsc.behaviour.drop_bind_after = 0.01
        smsc.kick("parley")
        got = await waits(clock, 7)
        grows(got[4:])
    finally:
        await s.close()
