"""The connector rate: one bucket in Redis for every process, slots to replies first."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest

from engine.core.config import RedisConfig
from engine.core.store import Store
from gateways.rate import Pacer, Ticket


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    return max(sum(1 for t in times if s <= t < s + 1.0) for s in times)


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[list[Store]]:
    """Two stores with their own connection pools: two processes as far as Redis can tell."""
    made = [Store.connect(redis_url, RedisConfig()) for _ in range(2)]
    yield made
    for s in made:
        await s.close()


async def test_two_processes_sending_through_one_connector_share_its_rate(stores: list[Store]) -> None:
    granted: list[float] = []

    async def process(store: Store) -> None:
        async with Pacer(store, "carrier", 40) as pacer:
            for _ in range(30):
                await pacer.acquire(Ticket(cost=1, urgent=False))
                granted.append(time.perf_counter())

    await asyncio.gather(*(process(s) for s in stores))
    assert len(granted) == 60
    assert busiest_second(granted) <= 40  # not 80: the bucket is shared
    assert max(granted) - min(granted) >= 59 / 40 * 0.95


async def test_a_waiting_reply_gets_the_next_slot_before_any_waiting_bulk(stores: list[Store]) -> None:
    order: list[str] = []
    async with Pacer(stores[0], "carrier", 50) as pacer:

        async def wait(name: str, urgent: bool) -> None:
            await pacer.acquire(Ticket(cost=1, urgent=urgent))
            order.append(name)
            if len(order) == 2:
                started.set()

        started = asyncio.Event()
        bulk = [asyncio.create_task(wait(f"bulk{i}", False)) for i in range(10)]
        await started.wait()
        await wait("reply", True)
        await asyncio.gather(*bulk)
    # At most the slot already booked (and the one it may be sleeping towards) goes first.
    assert order.index("reply") <= 4, order


async def test_a_bulk_message_promoted_by_a_later_reply_goes_with_the_replies(stores: list[Store]) -> None:
    order: list[str] = []
    async with Pacer(stores[0], "carrier", 50) as pacer:
        tickets = [Ticket(cost=1, urgent=False) for _ in range(10)]

        async def wait(name: str, ticket: Ticket) -> None:
            await pacer.acquire(ticket)
            order.append(name)
            if len(order) == 2:
                started.set()

        started = asyncio.Event()
        tasks = [asyncio.create_task(wait(f"bulk{i}", t)) for i, t in enumerate(tickets)]
        await started.wait()
        pacer.promote(tickets[9])  # the contact of the last bulk message just texted in
        await asyncio.gather(*tasks)
    assert order.index("bulk9") <= 4, order


async def test_a_message_of_three_segments_takes_three_slots(stores: list[Store]) -> None:
    granted: list[float] = []
    async with Pacer(stores[0], "carrier", 60) as pacer:
        for _ in range(5):
            await pacer.acquire(Ticket(cost=3, urgent=False))
            granted.append(time.perf_counter())
    gaps = [b - a for a, b in itertools.pairwise(granted)]
    assert min(gaps) >= 3 / 60 * 0.9, gaps
