"""Listing and searching contacts from the shards' listing indexes (engine/crm/index.py), a page
at a time, with an opaque cursor.

**Order.** Contacts come by created-at, then number (``CA|N``: the members' own byte order);
with ``updated_since`` they come by updated-at, then number, from that time on (a changes
feed). Each shard's index gives its part of the range from the cursor on (``ZRANGE BYLEX``,
pipelined over the shards) and the parts are merged: only members up to the smallest "last
member" of a shard that may hold more are taken, so the merged order is exact.

**Which index drives.** Without ``updated_since`` every filter that has an index of its own (a
tag, a consent status) is a candidate beside "every contact"; the one with the fewest members
from the start position (``ZLEXCOUNT`` per shard: O(log n)) is read, and the rest of the
filter is checked on each contact read (its profile and consent, one pipelined round trip per
batch). All of them order by ``CA|N``, so a cursor holds whichever was used.

**Stable under writes.** The cursor is the position of the last contact examined, not an offset:
a contact added while a client pages is created after every contact already listed (the
clock, at ms), so it is never listed twice and none listed before is skipped; a contact changed
while a client pages keeps its created-at, so it stays where it was. With ``updated_since``, a
contact changed after it was listed is listed again at its new place (a changes feed wants it).
A member whose contact changed since it was written (a stale member: a reindex left it, or the
contact was erased between the read and the load) is checked against the contact and skipped.

**Bounded work.** A page examines at most ``max_examined`` contacts; a narrow filter over a wide
index may then answer fewer than ``limit`` contacts with a ``next_cursor`` to go on from.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from engine.core import keys
from engine.core.contacts import Contact
from engine.core.errors import Unprocessable
from engine.core.store import Store
from engine.crm.index import TIME_DIGITS, stamp
from engine.flows.conditions import Condition
from engine.governance.consent import OPTED_IN, OPTED_OUT, UNKNOWN

#: A page examines at most this many index members (filtered out or not).
MAX_EXAMINED = 5000
#: Members read per shard per round trip, at most.
MAX_FETCH = 1000
HOLE = "\x00"
#: A round trip reads at least this many contacts (a filter may turn most of them away).
LOAD_AT_LEAST = 64


@dataclass(frozen=True)
class ContactFilter:
    """What a listing keeps: every condition on ``contact.*``, every tag, the consent status,
    created / updated at or after (ms). Empty: every contact."""

    conditions: tuple[Condition, ...] = ()
    tags: tuple[str, ...] = ()
    consent: str | None = None
    created_since: int | None = None
    updated_since: int | None = None

    def keeps(self, c: Contact, status: str) -> bool:
        if self.consent is not None and status != self.consent:
            return False
        if any(t not in c.tags for t in self.tags):
            return False
        if self.created_since is not None and c.created_at < self.created_since:
            return False
        if self.updated_since is not None and c.updated_at < self.updated_since:
            return False
        if self.conditions:
            view = {"contact": c.template_view()}
            return all(cond(view) for cond in self.conditions)
        return True

    def also(self, other: ContactFilter) -> ContactFilter:
        """Both filters at once (a saved segment and the request's own parameters)."""

        def later(a: int | None, b: int | None) -> int | None:
            return b if a is None else a if b is None else max(a, b)

        if self.consent and other.consent and self.consent != other.consent:
            consent: str | None = "\x00none"  # two different statuses: nothing matches
        else:
            consent = self.consent or other.consent
        return ContactFilter(
            (*self.conditions, *other.conditions),
            tuple(dict.fromkeys((*self.tags, *other.tags))),
            consent,
            later(self.created_since, other.created_since),
            later(self.updated_since, other.updated_since),
        )


@dataclass
class Listed:
    """A listing's page: the contacts (with their consent status) and where the next page starts."""

    contacts: list[tuple[Contact, str]] = field(default_factory=list)
    next_cursor: str | None = None


def encode_cursor(order: str, position: str) -> str:
    return base64.urlsafe_b64encode(f"1:{order}:{position}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, order: str) -> str:
    """The position in ``cursor`` (a 422 naming ``cursor`` when it is not one of ours, or was
    made for the other order)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, got, position = raw.split(":", 2)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Unprocessable("cursor", "is not a cursor this API gave (use next_cursor as it is)") from None
    if version != "1" or got not in ("c", "u") or "|" not in position:
        raise Unprocessable("cursor", "is not a cursor this API gave (use next_cursor as it is)")
    if got != order:
        raise Unprocessable("cursor", "was given for another query (updated_since changes the order)")
    return position


def _drivers(f: ContactFilter) -> list[str]:
    """The index prefixes that could drive a listing by created-at under ``f``."""
    out = ["c|"]
    out += [f"t|{t}|" for t in f.tags]
    if f.consent in (OPTED_IN, OPTED_OUT):  # "unknown" (no record) has no members of its own
        out.append(f"g|{f.consent}|")
    return out


def _end(prefix: str) -> str:
    """The exclusive upper bound of every member starting with ``prefix`` (``|`` + 1 is ``}``;
    tags and statuses use only characters below ``|``)."""
    return "(" + prefix[:-1] + "}"


async def _smallest(store: Store, shards: int, prefixes: list[str], start: str) -> str:
    if len(prefixes) == 1:
        return prefixes[0]
    async with store.redis.pipeline(transaction=False) as pipe:
        for p in prefixes:
            for s in range(shards):
                pipe.zlexcount(keys.contact_index(s), start.replace(HOLE, p, 1), _end(p))
        counts = await pipe.execute()
    totals = [sum(counts[i * shards : (i + 1) * shards]) for i in range(len(prefixes))]
    return prefixes[totals.index(min(totals))]


async def page(
    store: Store, shards: int, f: ContactFilter, *, limit: int, cursor: str | None = None,
    max_examined: int = MAX_EXAMINED, consent: bool = False,
) -> Listed:  # fmt: skip
    """One page of the contacts ``f`` keeps, from ``cursor`` on (the module docstring says how);
    each with its consent status when ``consent`` (else "", unless ``f`` filters on it)."""
    read_consent = consent or f.consent is not None
    order = "u" if f.updated_since is not None else "c"
    position = decode_cursor(cursor, order) if cursor else None
    since = (f.updated_since if order == "u" else f.created_since) or 0
    # The range's start, with HOLE where the driver's prefix goes once it is chosen.
    after_cursor = bool(position) and position is not None and position >= stamp(since)
    start = f"({HOLE}{position}" if after_cursor else f"[{HOLE}{stamp(since)}"
    prefix = "u|" if order == "u" else await _smallest(store, shards, _drivers(f), start)
    start = start.replace(HOLE, prefix, 1)
    out = Listed()
    examined = 0
    last: str | None = position
    while True:
        needed = limit - len(out.contacts)
        want = min(MAX_FETCH, max(10, 2 * needed // shards + 1))
        merged, more = await _merged(store, shards, prefix, start, want)
        # Read only about what the page still needs (a contact read is the dear part).
        batch = merged[: max(needed, LOAD_AT_LEAST)]
        more = more or len(batch) < len(merged)
        done = False
        if batch:
            loaded = await _load(store, shards, [n for _, n in batch], consent=read_consent)
            for (pos, _), (c, status) in zip(batch, loaded, strict=True):
                examined += 1
                last = pos
                at = 0 if c is None else c.updated_at if order == "u" else c.created_at
                fresh = c is not None and stamp(at) == pos[:TIME_DIGITS]
                if fresh and f.keeps(c, status):
                    out.contacts.append((c, status))
                    if len(out.contacts) >= limit:
                        done = True
                        break
                if examined >= max_examined:
                    done = True
                    break
        exhausted = not more and (not batch or last == batch[-1][0])
        if exhausted:
            out.next_cursor = None
            return out
        if done:
            assert last is not None
            out.next_cursor = encode_cursor(order, last)
            return out
        assert last is not None
        start = f"({prefix}{last}"


async def _merged(
    store: Store, shards: int, prefix: str, start: str, want: int
) -> tuple[list[tuple[str, str]], bool]:
    """The next members of ``prefix`` after ``start`` over every shard, merged in order, as
    (position ``CA|N``, number); and whether any shard may hold more."""
    async with store.redis.pipeline(transaction=False) as pipe:
        for s in range(shards):
            pipe.zrange(keys.contact_index(s), start, _end(prefix), bylex=True, offset=0, num=want)
        parts: list[list[bytes]] = await pipe.execute()
    cut = len(prefix)
    full = [p[-1].decode()[cut:] for p in parts if len(p) == want]
    bound = min(full) if full else None
    merged = sorted(m.decode()[cut:] for p in parts for m in p)
    if bound is not None:
        merged = [m for m in merged if m <= bound]
    return [(m, m.split("|", 1)[1]) for m in merged], bound is not None


async def _load(store: Store, shards: int, numbers: list[str], *, consent: bool) -> list[tuple[Any, str]]:
    """Each contact (None when it is gone) with its consent status (when ``consent``), in one
    round trip."""
    async with store.redis.pipeline(transaction=False) as pipe:
        for n in numbers:
            s = keys.shard_of(n, shards)
            pipe.hgetall(keys.contact(n, s))
            if consent:
                pipe.hget(keys.governance(n, s), "cs")
        raw = await pipe.execute()
    if not consent:
        return [(Contact.from_hash(n, h), "") for n, h in zip(numbers, raw, strict=True)]
    return [
        (Contact.from_hash(n, h), cs.decode() if cs else UNKNOWN)
        for n, h, cs in zip(numbers, raw[::2], raw[1::2], strict=True)
    ]


async def every(
    store: Store, shards: int, f: ContactFilter, *, batch: int = 500, consent: bool = False
) -> AsyncIterator[tuple[Contact, str]]:
    """Every contact ``f`` keeps, in the listing's order, a page at a time (an export, a
    segment's start): memory holds one page, never the whole list."""
    cursor: str | None = None
    while True:
        most = max(batch * 10, MAX_EXAMINED)
        listed = await page(store, shards, f, limit=batch, cursor=cursor, max_examined=most, consent=consent)
        for item in listed.contacts:
            yield item
        if listed.next_cursor is None:
            return
        cursor = listed.next_cursor
