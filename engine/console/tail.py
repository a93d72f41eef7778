"""The live tail of the Conversations page: the newest outcome events of every shard (what each
turn did: runs started, replies, results, ends, consent changes, inbox steps, message statuses;
engine/conversation/outcomes.py), newest first.

It reads the streams the turns already write (``p:fx:T``), only when a console polls: one
pipelined XREVRANGE per shard, bounded by ``limit``; with ``since`` (a stream id's ms that the
last poll answered) a quiet engine answers empty streams. The hot path pays nothing.
Entries are ordered by their stream ids (Redis's clock: one order across shards on one node,
close enough on a cluster); the events' own ``at`` is the engine's clock and is what is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from engine.core import keys
from engine.core.store import Store

#: The most events one poll answers.
MAX_LIMIT = 200


@dataclass(frozen=True)
class TailEvent:
    """One outcome event: ``id`` is ``S/ms-seq`` (unique, and what a poller dedupes on)."""

    id: str
    ms: int  # the stream id's time (the cursor)
    at: int  # the engine's time of the event
    kind: str
    contact: str
    flow: str | None
    summary: str


def _seconds(ms: Any) -> str:
    s = int(ms or 0) / 1000
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.0f} min"


def summary(e: dict[str, Any]) -> str:
    """What the event says, in a few words (no phone number: the page shows the contact)."""
    t = e.get("t")
    if t == "started":
        via = (
            f" (start {e['start']})"
            if e.get("start")
            else f" (campaign {e['campaign']})"
            if e.get("campaign")
            else ""
        )
        return f"started {e.get('f')}{via}"
    if t == "replied":
        return f"replied at {e.get('node')} after {_seconds(e.get('wait_ms'))}"
    if t == "result":
        cat = f" ({e['category']})" if e.get("category") not in (None, "", e.get("value")) else ""
        return f"{e.get('name')} = {e.get('value')}{cat}"
    if t == "ended":
        why = f": {e['reason']}" if e.get("reason") else ""
        node = f", last node {e['node']}" if e.get("node") else ""
        return f"ended: {e.get('outcome')}{why}{node}"
    if t == "consent":
        return f"consent {e.get('status')} ({e.get('source')})"
    if t == "opt_out_review":
        return "an opt-out keyword to review"
    if t == "inbox":
        by = f" by {e['by']}" if e.get("by") else ""
        return f"inbox: {str(e.get('step', '')).replace('_', ' ')}{by}"
    if t == "message":
        status = "refused" if e.get("status") == "blocked" else e.get("status")
        err = f" ({e['error']})" if e.get("error") else ""
        return f"message {status}{err}"
    if t == "skipped":
        return f"start of {e.get('f')} skipped: {e.get('reason')}"
    if t == "deferred":
        return f"start of {e.get('f')} deferred (quiet hours)"
    return str(t)


async def recent(store: Store, shards: int, *, limit: int = 50, since: int | None = None) -> list[TailEvent]:
    """The newest ``limit`` outcome events of every shard, newest first; with ``since`` (ms),
    only those whose stream id is at or after it (a poller passes the newest ``ms`` it has and
    drops the ids it already holds). One round trip."""
    limit = max(1, min(limit, MAX_LIMIT))
    low = str(since) if since is not None else "-"
    async with store.redis.pipeline(transaction=False) as pipe:
        for s in range(shards):
            pipe.xrevrange(keys.flow_events(s), "+", low, count=limit)
        per_shard: list[list[tuple[bytes, dict[bytes, bytes]]]] = await pipe.execute()
    found: list[tuple[int, int, int, str, dict[str, Any]]] = []
    for shard, entries in enumerate(per_shard):
        for entry_id, f in entries:
            raw = f.get(b"e")
            if raw is None:
                continue
            eid = entry_id.decode()
            ms, _, seq = eid.partition("-")
            found.append((int(ms), shard, int(seq or 0), eid, orjson.loads(raw)))
    found.sort(key=lambda x: (x[0], x[2], x[1]), reverse=True)
    return [
        TailEvent(
            f"{shard}/{eid}",
            ms,
            int(e.get("at") or ms),
            str(e.get("t", "")),
            str(e.get("c", "")),
            e.get("f") or None,
            summary(e),
        )
        for ms, shard, _, eid, e in found[:limit]
    ]
