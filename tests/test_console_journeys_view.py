"""The Journeys page's reading of starts and campaign timers (engine/console/journeys_view.py):
a start's progress adds up to its deliveries; campaigns' next fires come from the timers."""

from __future__ import annotations

from engine.app.runtime import Runtime
from engine.console import journeys_view
from engine.core import keys
from tests.conftest import shard

ANN, BOB = "+447700900123", "+447700900124"


def test_a_starts_deliveries_split_into_sent_skipped_cancelled_and_waiting() -> None:
    start = {"requested": 12, "queued": 4, "scheduled": 6, "skipped_at_request": {"holdout": 2}}
    turns = {"started": 5, "deferred": 1, "skipped": {"opted_out": 1, "cancelled": 2}}
    p = journeys_view.progress(start, turns)
    assert (p.to_deliver, p.sent, p.skipped, p.cancelled, p.waiting) == (10, 5, 1, 2, 2)
    assert p.skipped_reasons == {"opted_out": 1} and p.skipped_at_request == 2
    assert p.status == "scheduled" and p.share(p.sent) == 50.0  # some wait for send_at
    assert journeys_view.progress({**start, "queued": 10, "scheduled": 0}, turns).status == "in progress"
    assert (
        journeys_view.progress({**start, "cancelled_at": "2026-12-01T00:00:00Z"}, turns).status == "cancelled"
    )
    done = journeys_view.progress(start, {"started": 9, "skipped": {"opted_out": 1}})
    assert (done.waiting, done.status) == (0, "done")
    assert journeys_view.progress({}, {}).share(0) == 0.0  # nothing to deliver: no division by 0


async def test_next_fires_are_the_soonest_campaign_timers(rt: Runtime) -> None:
    now = rt.clock.now_ms()
    r = rt.store.redis
    await r.zadd(keys.timers(shard(ANN)), {
        keys.timer_member(ANN, "k", "appts:before"): now + 60_000,
        keys.timer_member(ANN, "w", "0/1"): now + 1_000,  # a wait timeout: not a campaign's
        keys.timer_member(ANN, "k", "renewals:due"): now - 1,  # already due: not a next fire
    })  # fmt: skip
    await r.zadd(keys.timers(shard(BOB)), {keys.timer_member(BOB, "k", "appts:before"): now + 30_000})
    fires = await journeys_view.next_fires(rt.store, rt.config.engine.shards, now)
    assert set(fires) == {"appts:before"}
    f = fires["appts:before"]
    assert (f.campaign, f.event, f.next_ms, f.contacts) == ("appts", "before", now + 30_000, 2)
