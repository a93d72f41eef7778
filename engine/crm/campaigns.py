"""Campaigns in Redis: the timers of contacts whose date fields were written, the campaigns
defined through the API, and the backfill that schedules existing contacts for a new campaign.

Where a fire time comes from is engine/flows/campaigns.py; this module writes them:

- **A contact written** (``PUT /v1/contacts/{n}``, an import): :func:`schedule` sets each
  campaign event's timer for it (``p:tm:T``, kind ``k``), one campaigns.lua call per shard of
  the batch, in one round trip. A flow's ``set:`` moves them in its turn's commit instead
  (engine/conversation/turn.py). Erasing a contact removes its timers with the rest of it.
- **A campaign defined or changed**: :class:`CampaignKeeper` runs one backfill over the contacts
  (SCAN, 1,000 at a time, one round trip a batch, paused between batches) that sets that
  campaign's timers; its progress is in ``p:cpb:NAME``. Files are backfilled at start-up when
  their definition (digest) is not the one last backfilled. A campaign deleted is not swept:
  its timers, when they fire, find it gone and start nothing.
- **API campaigns** are kept in ``p:cpg`` (name -> JSON); every process reads them again every
  ``REFRESH_S`` (and at once after its own PUT or DELETE), so all of them fire the same set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import orjson
from redis.exceptions import NoScriptError

from engine.core import keys
from engine.core.clock import Clock
from engine.core.config import Config
from engine.core.contacts import Contact
from engine.core.errors import Conflict, NotFound, Unprocessable
from engine.core.scripts.campaigns import CampaignTimersArgs, CampaignTimersReply
from engine.core.store import Store
from engine.crm.journeys import JourneyServices
from engine.flows.campaigns import Campaign, CampaignBook, Problems, load_dir, parse
from engine.governance.quiet import QuietHours

log = logging.getLogger(__name__)

#: Contacts per SCAN step and per scheduling round trip of a backfill.
SCAN_COUNT = 1000


class ScheduleServices(Protocol):
    """What setting timers uses (JourneyServices has it; ``parley contacts import`` builds it)."""

    @property
    def config(self) -> Config: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def store(self) -> Store: ...

    @property
    def quiet(self) -> QuietHours: ...


#: How often a process reads the API's campaigns again.
REFRESH_S = 2.0
#: The pause between two backfill batches, so a backfill never starves the turns.
BACKFILL_PAUSE_S = 0.01


async def schedule(
    rt: ScheduleServices, book: CampaignBook, batch: Iterable[Contact], only: str | None = None
) -> CampaignTimersReply:
    """Set the campaign timers of ``batch`` (``only``: one campaign's); one round trip."""
    if not book.campaigns:
        return CampaignTimersReply(0, 0)
    now = rt.clock.now_ms()
    shards = rt.config.engine.shards
    by_shard: dict[int, list[tuple[str, int | None, int | None]]] = defaultdict(list)
    for c in batch:
        zone = rt.quiet.zone_of(c.number, c.timezone)
        for s in book.slots(c.number, c.fields, zone, now, only):
            by_shard[keys.shard_of(c.number, shards)].append((s.member, s.due, s.keep))
    if not by_shard:
        return CampaignTimersReply(0, 0)
    for attempt in (1, 2):
        async with rt.store.redis.pipeline(transaction=False) as pipe:
            for shard, slots in by_shard.items():
                call = CampaignTimersArgs(shard, tuple(slots))
                await rt.store.run("campaigns", call.to_keys(), call.to_argv(), client=pipe)
            try:
                replies = await pipe.execute()
                break
            except NoScriptError:
                # Redis lost its script cache (a restart): nothing ran; load and go again once.
                if attempt == 2:
                    raise
                await rt.store.load_scripts()
    got = [CampaignTimersReply.parse(r) for r in replies]
    return CampaignTimersReply(sum(g.scheduled for g in got), sum(g.removed for g in got))


async def backfill(rt: JourneyServices, book: CampaignBook, camp: Campaign) -> dict[str, Any]:
    """Set ``camp``'s timers for every contact (an explicit pass; SCAN, 1,000 a round trip)."""
    r = rt.store.redis
    key = keys.campaign_backfill(camp.name)
    report: dict[Any, Any] = {"digest": camp.digest, "state": "running", "scanned": 0, "scheduled": 0,
                              "started": rt.clock.now_ms()}  # fmt: skip
    await r.hset(key, mapping=report)
    batch: list[bytes] = []

    async def flush() -> None:
        async with r.pipeline(transaction=False) as pipe:
            for k in batch:
                pipe.hgetall(k)
            hashes = await pipe.execute()
        found = [
            c
            for k, h in zip(batch, hashes, strict=True)
            if (c := Contact.from_hash(keys.number_of_contact_key(k.decode()), h)) is not None
        ]
        done = await schedule(rt, book, found, only=camp.name)
        report["scanned"] += len(batch)
        report["scheduled"] += done.scheduled
        batch.clear()
        await r.hset(key, mapping={"scanned": report["scanned"], "scheduled": report["scheduled"]})
        await asyncio.sleep(BACKFILL_PAUSE_S)

    async for k in r.scan_iter(match=keys.contact_pattern(), count=SCAN_COUNT, _type="HASH"):
        batch.append(k)
        if len(batch) >= SCAN_COUNT:
            await flush()
    if batch:
        await flush()
    report.update(state="done", finished=rt.clock.now_ms())
    await r.hset(key, mapping={"digest": camp.digest, "state": "done", "finished": report["finished"]})
    log.info(
        "campaign %s backfilled: %d contacts, %d timers set",
        camp.name,
        report["scanned"],
        report["scheduled"],
    )
    return report


async def backfill_status(rt: JourneyServices, name: str) -> dict[str, Any] | None:
    h: dict[Any, Any] = await rt.store.redis.hgetall(keys.campaign_backfill(name))
    if not h:
        return None
    out: dict[str, Any] = {k.decode(): v.decode() for k, v in h.items()}
    for k in ("scanned", "scheduled", "started", "finished"):
        if k in out:
            out[k] = int(out[k])
    return out


def from_body(name: str, body: Any, flows: set[str]) -> Campaign:
    """An API body as a campaign; the first problem as a 422 naming its field."""
    problems = Problems()
    camp = parse(name, body, problems, flows=flows)
    if camp is None:
        path, _, message = problems.found[0]
        raise Unprocessable(path or "body", message)
    return camp


async def read_api(rt: ScheduleServices) -> dict[str, Campaign]:
    """The campaigns stored through the API (one that no longer validates is logged and left out)."""
    out: dict[str, Campaign] = {}
    stored: dict[Any, Any] = await rt.store.redis.hgetall(keys.campaigns())
    for name_b, raw in stored.items():
        name = name_b.decode()
        problems = Problems()
        camp = parse(name, orjson.loads(raw), problems)
        if camp is None:
            log.error("campaign %s in Redis is not valid: %s", name, problems.found)
            continue
        out[name] = camp
    return out


async def book_for(rt: ScheduleServices, files_dir: Path) -> CampaignBook:
    """The campaigns in force, for a process without a keeper (``parley contacts import``)."""
    return CampaignBook({**await read_api(rt), **load_dir(files_dir, None)})


class CampaignKeeper:
    """``async with CampaignKeeper(rt, files_dir, flows):`` the campaigns in force in this process
    (``book``), read again from Redis every REFRESH_S; runs the backfills this process starts."""

    def __init__(self, rt: JourneyServices, files_dir: Path, flows: set[str], backfill_files: bool) -> None:
        self.rt = rt
        self.files_dir = files_dir
        self.files = load_dir(files_dir, flows)
        self.api: dict[str, Campaign] = {}
        self.book = CampaignBook(self.files)
        self._backfill_files = backfill_files
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refresher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CampaignKeeper:
        await self.refresh()
        if self._backfill_files:
            for camp in self.files.values():
                done = await backfill_status(self.rt, camp.name)
                if not done or done.get("digest") != camp.digest or done.get("state") != "done":
                    self.start_backfill(camp)
        self._refresher = asyncio.create_task(self._refresh_loop(), name="parley-campaigns")
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks = [t for t in (self._refresher, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    def reload_files(self, flows: set[str]) -> None:
        """The files again (after a flows reload); FlowErrors and nothing changed if invalid."""
        fresh = load_dir(self.files_dir, flows)
        changed = [c for n, c in fresh.items() if self.files.get(n) != c]
        self.files = fresh
        self._rebuild()
        for camp in changed:
            self.start_backfill(camp)

    async def refresh(self) -> CampaignBook:
        self.api = await read_api(self.rt)
        self._rebuild()
        return self.book

    def _rebuild(self) -> None:
        merged = {**{n: c for n, c in self.api.items() if n not in self.files}, **self.files}
        if merged != self.book.campaigns:
            self.book = CampaignBook(merged)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.refresh()
            except Exception as exc:  # Redis away: keep the campaigns known, try again
                log.warning("campaigns: cannot read them from Redis (%s)", exc)

    def start_backfill(self, camp: Campaign) -> None:
        task = asyncio.create_task(self._backfill(camp), name=f"parley-backfill-{camp.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _backfill(self, camp: Campaign) -> None:
        try:
            await backfill(self.rt, self.book, camp)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("campaign %s: backfill failed; PUT it again to retry", camp.name)

    async def put(self, camp: Campaign) -> bool:
        """Store an API campaign and backfill it (once per definition); whether it was created."""
        if camp.name in self.files:
            raise Conflict(
                f"campaign {camp.name!r} is defined in {self.files[camp.name].path}; edit the file"
            )
        body = orjson.dumps({"description": camp.description, "events": [e.as_json() for e in camp.events]})
        created = bool(await self.rt.store.redis.hset(keys.campaigns(), camp.name, body))
        await self.refresh()
        done = await backfill_status(self.rt, camp.name)
        stored = self.book.get(camp.name)
        # The same definition again needs no second pass (unless the last one did not finish).
        if stored is not None and not (
            done and done.get("digest") == stored.digest and done.get("state") == "done"
        ):
            self.start_backfill(stored)
        return created

    async def delete(self, name: str) -> None:
        if name in self.files:
            raise Conflict(f"campaign {name!r} is defined in {self.files[name].path}; remove the file")
        if not await self.rt.store.redis.hdel(keys.campaigns(), name):
            raise NotFound(f"no campaign {name!r}")
        await self.rt.store.redis.delete(keys.campaign_backfill(name))
        await self.refresh()
