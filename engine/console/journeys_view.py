"""Journey starts and campaigns shaped for the Journeys page: a start's progress (how many of
its deliveries started a run, were skipped, cancelled, or still wait) and each campaign event's
next fires, when the timers say so cheaply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.core import keys
from engine.core.store import Store
from engine.flows.campaigns import TIMER_KIND

#: Timers read per shard, soonest first, when looking for campaigns' next fires: a bound on the
#: page's cost (a campaign whose first fire lies beyond them shows "not among the next timers").
LOOKAHEAD = 500


@dataclass(frozen=True)
class Progress:
    """A start's deliveries: ``to_deliver`` (queued + scheduled at request time) split into
    ``sent`` (a run started), ``skipped`` (by the gate or the contact's state, at send time),
    ``cancelled`` and ``waiting``; ``deferred`` (moved by quiet hours) are among the waiting
    until they start."""

    requested: int
    skipped_at_request: int
    to_deliver: int
    sent: int
    deferred: int
    skipped: int
    cancelled: int
    waiting: int
    skipped_reasons: dict[str, int]
    status: str

    def share(self, part: int) -> float:
        """``part`` as a percentage of the deliveries (for a progress bar's width)."""
        return round(100 * part / self.to_deliver, 2) if self.to_deliver else 0.0


def progress(start: dict[str, Any], turns: dict[str, Any]) -> Progress:
    """A start (a row of ``GET /v1/starts`` or ``GET /v1/starts/{id}``) and its turns."""
    to_deliver = int(start.get("queued", 0)) + int(start.get("scheduled", 0))
    reasons = dict(turns.get("skipped", {}))
    cancelled = reasons.pop("cancelled", 0)
    skipped = sum(reasons.values())
    sent = turns.get("started", 0)
    waiting = max(0, to_deliver - sent - skipped - cancelled)
    if start.get("cancelled_at") or start.get("status") == "cancelled":
        status = "cancelled"
    elif waiting:
        status = "scheduled" if int(start.get("scheduled", 0)) else "in progress"
    else:
        status = "done"
    at_request = start.get("skipped_at_request")
    return Progress(
        requested=int(start.get("requested", 0)),
        skipped_at_request=sum(at_request.values()) if isinstance(at_request, dict) else 0,
        to_deliver=to_deliver, sent=sent, deferred=turns.get("deferred", 0), skipped=skipped,
        cancelled=cancelled, waiting=waiting, skipped_reasons=reasons, status=status,
    )  # fmt: skip


@dataclass(frozen=True)
class Fire:
    campaign: str
    event: str
    next_ms: int
    #: how many of the contacts' timers for this event fall among those read
    contacts: int


async def next_fires(store: Store, shards: int, now_ms: int, lookahead: int = LOOKAHEAD) -> dict[str, Fire]:
    """The soonest fire of each campaign event (``CAMPAIGN:EVENT`` -> Fire) among the first
    ``lookahead`` timers of every shard due from now (one pipelined round trip, all shards)."""
    async with store.redis.pipeline(transaction=False) as pipe:
        for s in range(shards):
            pipe.zrangebyscore(keys.timers(s), now_ms, "+inf", start=0, num=lookahead, withscores=True)
        pages: list[Any] = await pipe.execute()
    soonest: dict[str, int] = {}
    counts: dict[str, int] = {}
    for page in pages:
        for member, due in page:
            _, kind, token = member.decode().split("|", 2)
            if kind != TIMER_KIND:
                continue
            counts[token] = counts.get(token, 0) + 1
            soonest[token] = min(int(due), soonest.get(token, int(due)))
    out = {}
    for token, due in soonest.items():
        campaign, _, event = token.partition(":")
        out[token] = Fire(campaign, event, due, counts[token])
    return out
