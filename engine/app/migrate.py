"""The key layout of a database (``p:layout``), checked at start, and ``parley migrate``, which
converts a layout-1 database (every release before issue 18) to layout 2 (engine/core/keys.py).

At start (:func:`check_layout`, once Redis is reachable): ``p:layout`` = "2" goes on; absent on
a database that holds no layout-1 data (a new one) it is set to "2"; absent on a database that
holds layout-1 data (one of ``p:lease``, ``p:workers``, ``p:fx``, ``p:calls``, ``p:in:0``, or a
``p:c:{+...`` contact found by one bounded SCAN) start is refused, naming ``parley migrate``.

``parley migrate`` runs with every Parley process stopped (it refuses while a worker's
heartbeat in ``p:workers`` is live), against one Redis (a layout-1 database never ran on a
cluster), in place, and prints what it did:

- every per-contact key ``p:X:{N}...`` (c, s, ml, mh, g, cl, sent, att, cv, mo) is renamed to its
  layout-2 name in N's shard (``engine.shards``; RENAME keeps TTLs); ``p:dd:{N}:GW:ID`` (the dedupe
  marks of releases before issue 15, no longer read) are deleted;
- ``p:in:S``, ``p:tm:S``, ``p:dd:S:K:B`` are renamed to their tagged names (RENAME keeps the
  workers' consumer group and its pending entries); a database written with another shard count
  is refused (a shard stream at or above ``engine.shards``, or, when workers read them, fewer
  streams than ``engine.shards``): run with the shard count the database was written with;
- ``p:fx`` and ``p:calls`` become shard 0's ``p:fx:T`` and ``p:calls:T`` (RENAME keeps the
  webhooks' and callers' cursors and pending entries; each webhook's cursor is also set at the
  start of every other shard's outcome stream, so nothing a worker adds before the dispatcher
  runs is missed); ``p:whre:I``/``p:whdead:I`` become ``p:whre:{wI}``/``p:whdead:{wI}``;
- each outbound lane ``p:out:GW[:bulk]``: its entries not yet read by the senders move, in
  order, to the lane of their contact's shard, and the old lane is deleted; a lane with
  pending entries (read by a sender, not yet acknowledged) is refused: drain the senders first;
- ``p:slots:GW`` becomes ``p:slots:{GW}``; ``p:roll:GW:ID`` becomes ``p:roll:{GW:K}:ID`` (K the
  slot of the id in the connector's receipt map; a connector no longer configured: deleted);
  ``p:pid``, ``p:seg`` and ``p:dlrp`` already carried their ``{GW:K}`` tag and stay;
- an erased contact's ledger ``p:cl:h:D`` is named by a keyed hash of the number, so its shard
  cannot be known: it is copied to every shard's ``p:cl:h:TD`` (the consent view reads the one
  of the number's shard) and the old key deleted;
- ``p:lease`` and ``p:workers`` are deleted (leases are made again at start);
- ``p:layout`` is set to "2" last.

Each step does nothing when its layout-1 key is gone, so an interrupted migration is finished by
running it again, and running it on a layout-2 database changes nothing. A key whose layout-2
name already exists is not overwritten: it is reported and the migration stops before setting
``p:layout``.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.core import keys
from engine.core.config import Config
from engine.core.errors import LayoutError, MigrationRefused
from engine.core.store import Store

P = keys.PREFIX
#: Layout-1 keys whose presence says a database holds layout-1 data.
LAYOUT1_MARKERS = (f"{P}:lease", f"{P}:workers", f"{P}:fx", f"{P}:calls", f"{P}:in:0")
#: SCAN pattern of layout-1 contact profiles (layout 2's tag is ``{S.j}``, never a number).
LAYOUT1_CONTACTS = f"{P}:c:{{+*"
#: How many keys the one SCAN at start looks at.
SCAN_AT_START = 10_000
BATCH = 1000

_PER_CONTACT: dict[str, Callable[[str, int], str]] = {
    "c": keys.contact,
    "s": keys.session,
    "ml": keys.message_index,
    "mh": keys.message_records,
    "g": keys.governance,
    "cl": keys.consent_ledger,
    "sent": keys.counted_sends,
    "att": keys.attribution,
}
#: p:KIND:{N}REST of layout 1 (a layout-2 tag holds a dot: it never matches).
_CONTACT_KEY = re.compile(rb"^p:(c|s|ml|mh|g|cl|sent|att|cv|mo|dd):\{([^}.]+)\}(.*)$", re.S)
_SHARD_KEY = re.compile(rb"^p:(in|tm):(\d+)$")
_DEDUPE_KEY = re.compile(rb"^p:dd:(\d+):(\d+):(\d+)$")
_LANE_KEY = re.compile(rb"^p:out:([^{:][^:]*)(:bulk)?$")
_WEBHOOK_KEY = re.compile(rb"^p:(whre|whdead):(\d+)$")
_RATE_KEY = re.compile(rb"^p:slots:([^{][^:]*)$")
_ROLL_KEY = re.compile(rb"^p:roll:([^{:][^:]*):(.+)$", re.S)
_ERASED_KEY = re.compile(rb"^p:cl:h:([0-9a-f]+)$")


async def check_layout(store: Store) -> None:
    """At start: go on, mark a new database, or refuse a layout-1 one (see the module docstring)."""
    r = store.redis
    found = await _layout(store)
    if found is not None:
        if found != str(keys.LAYOUT):
            raise LayoutError(
                f"redis: this database holds Parley key layout {found}; this release "
                f"reads layout {keys.LAYOUT}"
            )
        return
    if await holds_layout1(store):
        raise LayoutError(
            "redis: this database holds an earlier release's keys (layout 1); stop every Parley "
            "process and run `parley migrate` to convert it, then start again"
        )
    await r.set(keys.layout(), str(keys.LAYOUT), nx=True)


async def _layout(store: Store) -> str | None:
    raw = await store.redis.get(keys.layout())
    return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)


async def holds_layout1(store: Store) -> bool:
    r = store.redis
    async with r.pipeline(transaction=False) as pipe:
        for k in LAYOUT1_MARKERS:
            pipe.exists(k)
        if any(await pipe.execute()):
            return True
    _, found = await r.scan(0, match=LAYOUT1_CONTACTS, count=SCAN_AT_START)
    return bool(found)


@dataclass
class Report:
    """What a migration did (printed line by line)."""

    lines: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n


async def migrate(store: Store, cfg: Config, *, receipt_slot: Callable[[str, str], int | None]) -> Report:
    """Convert a layout-1 database to layout 2 in place (see the module docstring).
    ``receipt_slot(gateway, id)`` is the slot of ``id`` in that connector's receipt map (None: no
    such connector). Raises :class:`MigrationRefused` before changing anything when it cannot run."""
    r = store.redis
    shards = cfg.engine.shards
    out = Report()
    layout = await _layout(store)
    if layout == str(keys.LAYOUT):
        out.lines.append(f"this database is already key layout {keys.LAYOUT}: nothing to do")
        return out
    if layout is not None:
        raise MigrationRefused(f"this database holds key layout {layout}, which this release cannot convert")

    # Checks first: nothing is changed unless every step can run.
    now_ms = int(time.time() * 1000)
    if await r.zcount(f"{P}:workers", now_ms, "+inf"):
        raise MigrationRefused(
            "a Parley worker is running on this database (p:workers): stop every Parley process first"
        )
    lanes: list[tuple[bytes, str, str]] = []
    highest = -1  # the highest shard of an inbound stream
    async for k in r.scan_iter(match=f"{P}:*", count=BATCH):
        if m := _SHARD_KEY.match(k):
            if int(m[2]) >= shards:
                raise MigrationRefused(
                    f"{k.decode()} is shard {int(m[2])}, but engine.shards is {shards}: run with the "
                    "engine.shards the database was written with"
                )
            if m[1] == b"in":
                highest = max(highest, int(m[2]))
        if m := _LANE_KEY.match(k):
            gw, lane = m[1].decode(), "bulk" if m[2] else "reply"
            pending = await _pending(store, k)
            if pending:
                raise MigrationRefused(
                    f"{k.decode()} has {pending} message(s) a sender read and did not finish: drain "
                    "the senders first (start the old release with its senders until no message is "
                    "pending, then stop it)"
                )
            lanes.append((k, gw, lane))

    if 0 <= highest < shards - 1 and await _read_by_workers(store, f"{P}:in:{highest}"):
        # Workers made every shard's stream (and group) at start: the database had highest + 1.
        raise MigrationRefused(
            f"the database was written with engine.shards = {highest + 1}, but engine.shards is "
            f"{shards}: run with the engine.shards the database was written with"
        )

    # The steps.
    await _per_contact_keys(store, shards, out)
    for old_name, new in ((f"{P}:fx", keys.flow_events(0)), (f"{P}:calls", keys.calls(0))):
        await _rename(store, old_name.encode(), new, out, "shared streams")
    await _webhook_cursors(store, shards, out)
    async for k in r.scan_iter(match=f"{P}:*", count=BATCH):
        if m := _SHARD_KEY.match(k):
            s = int(m[2])
            new = keys.inbound_stream(s) if m[1] == b"in" else keys.timers(s)
            await _rename(store, k, new, out, "shard streams and timers")
        elif m := _DEDUPE_KEY.match(k):
            await _rename(store, k, keys.inbound_dedupe(int(m[1]), int(m[2]), int(m[3])), out, "dedupe maps")
        elif m := _WEBHOOK_KEY.match(k):
            i = int(m[2])
            new = keys.webhook_retry(i) if m[1] == b"whre" else keys.webhook_dead(i)
            await _rename(store, k, new, out, "webhook replays and dead letters")
        elif m := _RATE_KEY.match(k):
            await _rename(store, k, keys.rate(m[1].decode()), out, "connector rates")
        elif m := _ROLL_KEY.match(k):
            gw, first = m[1].decode(), m[2].decode()
            slot = receipt_slot(gw, first)
            if slot is None:
                await r.delete(k)
                out.count("multipart roll-ups of connectors no longer configured, deleted")
            else:
                await _rename(store, k, keys.smpp_rollup(gw, slot, first), out, "multipart roll-ups")
        elif m := _ERASED_KEY.match(k):
            await _spread_erased(store, k, m[1].decode(), shards, out)
    for k, gw, lane in lanes:
        await _move_lane(store, k, gw, lane, shards, out)
    dropped = int(await r.delete(f"{P}:lease", f"{P}:workers"))
    if dropped:
        out.count("worker leases deleted (made again at start)", dropped)

    for what, n in out.counts.items():
        out.lines.append(f"{what}: {n}")
    if out.conflicts:
        out.lines += [f"NOT MOVED: {c}" for c in out.conflicts]
        out.lines.append("p:layout left unset: resolve the keys above, then run parley migrate again")
        return out
    await r.set(keys.layout(), str(keys.LAYOUT))
    out.lines.append(f"p:layout = {keys.LAYOUT}: the database is key layout {keys.LAYOUT}")
    return out


async def _webhook_cursors(store: Store, shards: int, out: Report) -> None:
    """Each outcome webhook's group (on shard 0's stream, once p:fx) also on every other shard's
    stream, from its start: events the workers add there before the dispatcher first runs are
    sent too (a dispatcher makes a missing group at the stream's end)."""
    r = store.redis
    if not await r.exists(keys.flow_events(0)):
        return
    groups: Any = await r.xinfo_groups(keys.flow_events(0))
    for g in groups:
        name = g["name"].decode() if isinstance(g["name"], bytes) else str(g["name"])
        for s in range(1, shards):
            try:
                await r.xgroup_create(keys.flow_events(s), name, id="0", mkstream=True)
                out.count("webhook cursors set at the start of the other shards' outcome streams")
            except Exception as exc:
                if "BUSYGROUP" not in str(exc):
                    raise


async def _read_by_workers(store: Store, stream: str) -> bool:
    groups: Any = await store.redis.xinfo_groups(stream)
    return any(g["name"] in (keys.INBOUND_GROUP, keys.INBOUND_GROUP.encode()) for g in groups)


async def _pending(store: Store, lane: bytes) -> int:
    try:
        info: Any = await store.redis.xpending(lane, keys.OUTBOUND_GROUP)
    except Exception as exc:  # no such group: nothing was read
        if "NOGROUP" in str(exc):
            return 0
        raise
    return int(info["pending"])


async def _rename(store: Store, old: bytes, new: str, out: Report, what: str) -> None:
    """RENAMENX ``old`` to ``new`` (nothing when ``old`` is gone); a taken ``new`` is a conflict."""
    try:
        moved = await store.redis.renamenx(old, new)
    except Exception as exc:
        if "no such key" in str(exc).lower():
            return
        raise
    if moved:
        out.count(what)
    else:
        out.conflicts.append(f"{old.decode(errors='replace')} -> {new} (the new name exists)")


async def _per_contact_keys(store: Store, shards: int, out: Report) -> None:
    r = store.redis
    async for k in r.scan_iter(match=f"{P}:*:{{*", count=BATCH):
        m = _CONTACT_KEY.match(k)
        if m is None:
            continue
        kind, number, rest = m[1].decode(), m[2].decode(), m[3].decode()
        s = keys.shard_of(number, shards)
        if kind == "dd":
            await r.delete(k)
            out.count("dedupe marks of releases before issue 15, deleted")
            continue
        if kind in _PER_CONTACT and not rest:
            new = _PER_CONTACT[kind](number, s)
        elif kind == "cv" and rest.startswith(":"):
            new = keys.conversion_seen(number, s, rest[1:])
        elif kind == "mo" and rest.startswith(":"):
            gw, to, ref, total = _mo_parts(rest[1:])
            new = keys.smpp_mo_parts(number, s, gw, to, ref, total)
        else:
            out.conflicts.append(f"{k.decode(errors='replace')} (not a key this release knows)")
            continue
        await _rename(store, k, new, out, "contact keys")


def _mo_parts(rest: str) -> tuple[str, str, int, int]:
    """``GW:to|ref|total`` of a layout-1 multipart text key."""
    gw, _, ident = rest.partition(":")
    to, ref, total = ident.rsplit("|", 2)
    return gw, to, int(ref), int(total)


async def _spread_erased(store: Store, old: bytes, digest: str, shards: int, out: Report) -> None:
    r = store.redis
    dump = await r.dump(old)
    if dump is None:
        return
    for s in range(shards):
        new = keys.erased_consent_ledger(digest, s)
        if not await r.exists(new):
            await r.restore(new, 0, dump)
    await r.delete(old)
    out.count("erased contacts' consent ledgers, copied to every shard")


async def _move_lane(store: Store, lane: bytes, gw: str, kind: str, shards: int, out: Report) -> None:
    """Move the entries the senders have not read yet, in order, to their contacts' shard lanes;
    each chunk is one MULTI (added there, deleted here), so a rerun moves only what is left."""
    r = store.redis
    start = "-"
    try:
        groups: Any = await r.xinfo_groups(lane)
    except Exception as exc:
        if "no such key" in str(exc).lower():
            return
        raise
    for g in groups:
        if g["name"] in (keys.OUTBOUND_GROUP, keys.OUTBOUND_GROUP.encode()):
            last = g["last-delivered-id"]
            start = "(" + (last.decode() if isinstance(last, bytes) else str(last))
    moved = 0
    while True:
        page: Any = await r.xrange(lane, min=start, count=BATCH)
        if not page:
            break
        async with r.pipeline(transaction=True) as pipe:
            for eid, fields in page:
                contact = fields.get(b"c", b"").decode()
                pipe.xadd(keys.outbound_stream(keys.shard_of(contact, shards), gw, kind), fields)
                pipe.xdel(lane, eid)
            await pipe.execute()
        moved += len(page)
        start = "(" + page[-1][0].decode()
    await r.delete(lane)
    out.count(f"queued messages moved to the shards' lanes ({lane.decode()})", moved)


def receipt_slots(cfg: Config) -> Callable[[str, str], int | None]:
    """``receipt_slot`` for :func:`migrate`: the configured connectors' receipt maps."""
    from gateways.registry import build_gateway

    buckets = {name: build_gateway(name, raw).receipt_buckets for name, raw in cfg.gateways.items()}

    def slot(gateway: str, ident: str) -> int | None:
        b = buckets.get(gateway)
        return None if b is None else b.slot(ident)

    return slot


async def run_migrate(cfg: Config) -> int:
    """``parley migrate``: convert the configured Redis (``redis.url``, else the embedded one's
    data directory, started for the migration) and print what was done."""
    async with contextlib.AsyncExitStack() as stack:
        url = cfg.redis.url
        if not url:
            from engine.core.redis_embedded import EmbeddedRedis

            embedded = EmbeddedRedis(cfg.redis.embedded_dir, persistent=True)
            await stack.enter_async_context(embedded)
            url = embedded.url
        store = Store.connect(url, cfg.redis)
        stack.push_async_callback(store.close)
        await store.ping()
        report = await migrate(store, cfg, receipt_slot=receipt_slots(cfg))
    for line in report.lines:
        print(line)
    return 1 if report.conflicts else 0
