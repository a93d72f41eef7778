"""The contacts' listing index: one sorted set per shard (``p:ix:T``, engine/core/keys.py), kept by
the scripts that write a contact (contact.lua, commit.lua, erase.lua: contact_index.lua is their
shared part), so listing and searching never scan the keyspace.

Every member has score 0, so members are ordered by their bytes, and a range of one kind is a
``ZRANGE ... BYLEX`` from a cursor:

    c|CA|N          every contact by created-at (CA: ms, 13 digits)
    u|UA|N          every contact by updated-at
    t|TAG|CA|N      one per tag of the contact, by created-at
    g|STATUS|CA|N   its consent status, when it has one (opted_in, opted_out), by created-at

One key per shard keeps each script on one Redis Cluster slot; a listing merges the shards'
ranges (engine/crm/listing.py). Consent changed outside a turn (the consent API) is indexed by
reindex.lua in the change's own transaction; ``parley contacts reindex`` (:func:`backfill`) puts
in the contacts written before the index existed.

Why not a SCAN: a SCAN visits every key of the database to find the contacts, at every request;
a page from the index reads only the members it returns (plus the filtered-out ones it passes).
"""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from engine.core import keys
from engine.core.scripts.reindex import ReindexArgs
from engine.core.store import Store

#: Contacts reindexed per round trip by the backfill.
BATCH = 1000
#: The width of a time in an index member (ms since the epoch, zero-padded).
TIME_DIGITS = 13


def stamp(ms: int) -> str:
    """A time as index members hold it (so byte order is time order)."""
    return f"{max(ms, 0):0{TIME_DIGITS}d}"


async def execute_with_reindex(store: Store, pipe: Pipeline, number: str, shard: int) -> None:
    """Run ``pipe`` (a transaction changing ``number``'s consent) with the contact's reindex
    queued at its end, so the index moves with the change. Redis that lost its script cache ran
    the rest of the transaction and refused only the script: it is loaded and run alone."""
    call = ReindexArgs(number, shard)
    await store.run("reindex", call.to_keys(), call.to_argv(), client=pipe)
    try:
        await pipe.execute()
    except NoScriptError:
        await store.load_scripts()
        await store.run("reindex", call.to_keys(), call.to_argv())


async def backfill(store: Store, shards: int, progress: Callable[[int], None] | None = None) -> int:
    """Index every contact as it is now (SCAN of the contact keys: the one full scan, run once
    after an upgrade and safe to run again, even while the engine runs); how many were indexed."""
    done = 0
    batch: list[str] = []

    async def flush() -> None:
        nonlocal done
        for attempt in (1, 2):
            async with store.redis.pipeline(transaction=False) as pipe:
                for n in batch:
                    call = ReindexArgs(n, keys.shard_of(n, shards))
                    await store.run("reindex", call.to_keys(), call.to_argv(), client=pipe)
                try:
                    found = await pipe.execute()
                except NoScriptError:
                    if attempt == 2:
                        raise
                    await store.load_scripts()
                    continue
            done += sum(int(x) for x in found)
            break
        batch.clear()
        if progress is not None:
            progress(done)

    # redis-py's cluster client scans every master.
    async for k in store.redis.scan_iter(match=keys.contact_pattern(), count=BATCH, _type="HASH"):
        batch.append(keys.number_of_contact_key(k.decode()))
        if len(batch) >= BATCH:
            await flush()
    if batch:
        await flush()
    return done
