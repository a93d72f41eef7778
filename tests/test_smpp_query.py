"""query_sm for overdue receipts, against the simulated SMSC: a lost receipt is made good by the
query's answer (delivered, undelivered), an answer that is not final or no answer at all leaves
the message as it was, each message is asked a bounded number of times, a round is bounded and
paced, and a message whose receipt came is never asked about. The clock is faked: rounds are
run by the test, at the age it sets."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engine.core.clock import FakeClock
from gateways.simulators.smsc import SimulatedSmsc, SmscBehaviour
from gateways.smpp.query import OverdueQueries
from tests.conftest import eventually
from tests.test_sender import Engine, engine
from tests.test_smpp_gateway import bound, gw_of, smpp_gw
from tests.test_smpp_options import send, status_of, submitted

BEA = "+447700900456"
QUERY = {"query_after": "10m", "query_interval": "1h", "query_attempts": 2, "query_rate": 1000}


@pytest.fixture
async def smsc() -> AsyncIterator[SimulatedSmsc]:
    async with SimulatedSmsc(behaviour=SmscBehaviour(dlr_delay=0.0, dlr_lost=True)) as s:
        yield s


async def query_engine(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc, clock: FakeClock, **extra: Any
) -> AsyncIterator[Engine]:
    async for e in engine(redis_url, tmp_path, {"smsc": smpp_gw(smsc, **{**QUERY, **extra})}, clock):
        await bound(e.rt)
        yield e


def queries(e: Engine) -> OverdueQueries:
    q = gw_of(e).queries
    assert q is not None
    return q


async def sent(e: Engine, mid: str) -> None:
    async def is_sent() -> bool:
        return await status_of(e, mid) == "sent"

    await eventually(is_sent, attempts=1000)


async def test_a_lost_receipt_is_made_good_by_query_sm_once_overdue(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc, clock: FakeClock
) -> None:
    smsc.behaviour.dlr_stat_for = {BEA.removeprefix("+"): "UNDELIV"}
    async for e in query_engine(redis_url, tmp_path, smsc, clock):
        ok, bad = await send(e), await send(e, to=BEA)
        await sent(e, ok)
        await sent(e, bad)
        assert await queries(e).run_once() == 0  # not overdue yet: nothing asked
        clock.advance(11 * 60)
        assert await queries(e).run_once() == 2
        assert await status_of(e, ok) == "delivered"
        async with e.api.get(f"/v1/messages/{bad}") as r:
            view = await r.json()
        assert view["status"] == "failed"
        ids = {(await submitted(smsc, n)).message_id for n in (1, 2)}
        assert {q[0] for q in smsc.queries} == ids
        assert {(q[1].addr, q[1].ton) for q in smsc.queries} == {("12345", 3)}  # as submitted
        clock.advance(11 * 60)
        assert await queries(e).run_once() == 0  # settled: not asked again


@pytest.mark.parametrize("answer", ["ENROUTE", "UNKNOWN", "fail"])
async def test_no_final_answer_keeps_the_status_and_asks_a_bounded_number_of_times(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc, clock: FakeClock, answer: str
) -> None:
    smsc.configure(query_answer=answer)
    async for e in query_engine(redis_url, tmp_path, smsc, clock):
        mid = await send(e)
        await sent(e, mid)
        for _ in range(2):
            clock.advance(11 * 60)
            assert await queries(e).run_once() == 1
            assert await status_of(e, mid) == "sent"
        clock.advance(11 * 60)
        assert await queries(e).run_once() == 0  # query_attempts: 2
        assert len(smsc.queries) == 2 and await status_of(e, mid) == "sent"


async def test_a_message_whose_receipt_came_is_never_asked_about(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc, clock: FakeClock
) -> None:
    smsc.configure(dlr_lost=False)
    async for e in query_engine(redis_url, tmp_path, smsc, clock):
        mid = await send(e)

        async def delivered(e: Engine = e, mid: str = mid) -> bool:
            return await status_of(e, mid) == "delivered"

        await eventually(delivered, attempts=1000)
        clock.advance(11 * 60)
        assert await queries(e).run_once() == 0
        assert smsc.queries == []


async def test_a_message_that_asked_for_no_receipt_is_not_asked_about(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc, clock: FakeClock
) -> None:
    async for e in query_engine(redis_url, tmp_path, smsc, clock):
        await sent(e, await send(e, receipts="none"))
        clock.advance(11 * 60)
        assert await queries(e).run_once() == 0


async def test_a_round_is_bounded_and_paced(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc, clock: FakeClock
) -> None:
    async for e in query_engine(redis_url, tmp_path, smsc, clock, query_batch=3, query_rate=20):
        ids = [await send(e, to=f"+4477009001{i:02d}") for i in range(5)]
        for mid in ids:
            await sent(e, mid)
        clock.advance(11 * 60)
        started = time.monotonic()
        assert await queries(e).run_once() == 3
        assert time.monotonic() - started >= 2 / 20 * 0.9  # 3 queries: two gaps at query_rate
        assert await queries(e).run_once() == 2  # the rest, next round
        statuses = [await status_of(e, mid) for mid in ids]
        assert statuses == ["delivered"] * 5


async def test_queries_older_than_the_receipt_window_are_forgotten(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc, clock: FakeClock
) -> None:
    async for e in query_engine(redis_url, tmp_path, smsc, clock, receipt_window="1h"):
        mid = await send(e)
        await sent(e, mid)
        clock.advance(2 * 3600)
        assert await queries(e).run_once() == 0
        assert smsc.queries == [] and await status_of(e, mid) == "sent"


async def test_the_query_loop_runs_on_its_own_in_the_process_holding_bind_0(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc
) -> None:
    extra = {**QUERY, "query_after": "200ms", "query_interval": "50ms"}
    async for e in engine(redis_url, tmp_path, {"smsc": smpp_gw(smsc, **extra)}):
        await bound(e.rt)
        mid = await send(e)

        async def delivered(e: Engine = e, mid: str = mid) -> bool:
            return await status_of(e, mid) == "delivered"

        await eventually(delivered, attempts=2000)
        assert len(smsc.queries) == 1
