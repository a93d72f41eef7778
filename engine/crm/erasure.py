"""Erasure (the right to be forgotten): ``DELETE /v1/contacts/{number}``, ``parley contacts forget``.

One script (erase.lua, one slot: every key it touches is in the contact's shard) removes,
atomically, everything Parley holds about the person under their number: the profile (``p:c``),
the conversation session (``p:s``), the message log and its records with the texts (``p:ml``,
``p:mh``), the counted sends (``p:sent``) and the contact's timers (members of its shard's
``p:tm:T`` that start with the number, found with ZSCAN).

Consent stays provable without the number in clear. The ledger ``p:cl:TN`` is moved, entry by
entry and in order, to ``p:cl:h:TD`` where ``D = HMAC-SHA256(key, number)`` (hex) and ``T`` the
contact's shard's tag (whoever looks for the history knows the number, so its shard), and ends with
an ``erased`` entry. Given the number (a complaint, a regulator's question) and the key, the
history is found again: ``GET /v1/contacts/{number}/consent`` shows it. The key is
``governance.erasure_key``; when that is not set Parley generates one and keeps it in Redis
(``p:erasure:key``), which keeps numbers out of plain sight but not from whoever holds a copy
of the Redis data: set the key (outside Redis) where that matters. Changing it makes earlier
hashed ledgers unreachable by number.

An objection survives erasure. The gate (commit.lua) reads the consent status ``p:g:TN`` before
any message is queued, so that hash is kept when it silences the number (opted out or
suppressed) and deleted otherwise: an opt-in does not outlive the person's data (a CRM bringing
the number back must gather consent again), an opt-out does (a re-imported number stays opted
out). Keeping the number in that one key is what a suppression list is: the minimum needed to
honour an objection, which data-protection guidance expects (e.g. the UK ICO's on suppression
lists). A hashed gate key would have to be computed on every turn and is only as strong as
the HMAC key.

The contact's flow outcome events (``p:fx:T``: runs, replies, saved results such as a free-text
reason, message statuses, journey assignments, conversions) are deleted after the script, by
one pass over every shard's stream (each bounded by ``engine.outcome_events_max``; a contact's
events are in its own shard's, but an upgraded database keeps its earlier events in shard 0's,
so every shard is looked through): reports computed afterwards no longer count the person's
runs. So are the contact's place in the inbox (``p:ho:TN`` and its entry in ``p:ib:T``), the last
journey touch (``p:att:TN``) and the number's arm in every experiment
(``p:xa:*``, found with SCAN: there are few) and the ids of the conversions the CRM reported
(``p:cv:TN:*``).

So are the owner records of the single messages sent to the number (``p:msg:T:ID``: number,
first status, times), found from its message log and its scheduled sends; one accepted in the
moment before the erasure and not yet through its turn keeps its owner record until it expires
(``engine.message_log_ttl``).

Not removed, because finding them means scanning every key and they expire on their own: the
provider-id map ``p:pid:...`` (number and message id per reply, the connector's
``receipt_window``, 72 h by default; a later receipt finds no record and changes nothing),
inbound dedupe marks in ``p:dd:...`` (a 32-bit hash of the number and a digest of the text, no
number in clear, ``engine.dedupe_window``), SMPP multipart parts ``p:mo:TN:...``
(``mo_part_ttl``). Stream entries already queued (a reply on an outbound lane, an inbound text,
a CRM call) are consumed and deleted by their readers within moments; a message queued just
before the erasure can still go out.

Race: a turn that loaded the session before the erasure and commits after it finds the
version changed (compare-and-swap) and reloads: nothing. A new event after the erasure (the
customer texts again, a flow is started) is a new conversation with a new record.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from typing import cast

import orjson

from engine.core import keys
from engine.core.scripts.erase import EraseArgs
from engine.core.store import Store


async def hmac_key(store: Store, configured: str) -> bytes:
    """The key for hashed ledgers: ``governance.erasure_key``, else one kept in Redis (made once)."""
    if configured:
        return configured.encode()
    r = store.redis
    await r.set(keys.erasure_key(), secrets.token_hex(32), nx=True)
    stored = await r.get(keys.erasure_key())
    assert isinstance(stored, bytes)
    return stored


def digest(key: bytes, number: str) -> str:
    return hmac.new(key, number.encode(), hashlib.sha256).hexdigest()


async def erased_ledger_key(store: Store, configured: str, number: str, shard: int) -> str:
    """Where the consent ledger of ``number`` (in ``shard``) is kept once the contact has been erased."""
    return keys.erased_consent_ledger(digest(await hmac_key(store, configured), number), shard)


async def forget(store: Store, number: str, *, shards: int, key: str, now_ms: int, source: str) -> bool:
    """Erase ``number`` (E.164); False when nothing was held for it. Idempotent: a second call
    changes nothing and returns False."""
    shard = keys.shard_of(number, shards)
    timers = keys.timers(shard)
    pattern = _glob_escape(keys.timer_member_prefix(number)) + "*"
    members = [m async for m, _ in store.redis.zscan_iter(timers, match=pattern, count=1000)]
    singles = await _single_ids(store, number, shard, members)
    ledger = await erased_ledger_key(store, key, number, shard)
    call = EraseArgs(number, ledger, shard, now_ms, source, tuple(members))
    done = await store.run("erase", call.to_keys(), call.to_argv())
    removed = await forget_outcomes(store, shards, number)
    async with store.redis.pipeline(transaction=False) as pipe:
        pipe.delete(keys.handoff(number, shard), keys.attribution(number, shard))
        pipe.zrem(keys.inbox(shard), number)
        for i in range(0, len(singles), 500):  # the owner records hold the number (one slot: T)
            pipe.delete(*(keys.single_message(shard, m) for m in singles[i : i + 500]))
        removed += sum(int(n) for n in await pipe.execute())
    async for xp in store.redis.scan_iter(match=keys.assignments("*"), count=1000):
        removed += int(await store.redis.hdel(xp, number))
    removed += await _forget_webhook_letters(store, number)
    seen = _glob_escape(keys.conversion_seen(number, shard, "")) + "*"
    async for k in store.redis.scan_iter(match=seen, count=1000):
        removed += int(await store.redis.delete(k))
    return bool(done) or removed > 0


async def _single_ids(store: Store, number: str, shard: int, timer_members: list[bytes]) -> list[str]:
    """The ids of the single messages sent to ``number`` whose owner records may still exist:
    every id in its message log (a single message's record is logged under its id once its turn
    ran) and the id in each of its scheduled sends (``d`` timers carrying a ``send`` event)."""
    logged = cast(list[bytes], await store.redis.zrange(keys.message_index(number, shard), 0, -1))
    ids = {m.decode() for m in logged}
    prefix = keys.timer_member(number, "d", "")
    for raw in timer_members:
        member = raw.decode()
        if member.startswith(prefix):
            with contextlib.suppress(ValueError, AttributeError):
                token = orjson.loads(member[len(prefix) :])
                if token.get("k") == "send" and token.get("p", {}).get("id"):
                    ids.add(str(token["p"]["id"]))
    return sorted(ids)


async def forget_outcomes(store: Store, shards: int, number: str) -> int:
    """Delete ``number``'s entries from every shard's flow outcome stream; how many were deleted."""
    from engine.crm import reports  # reports reads the streams; erasure is their one writer of deletions

    needle = orjson.dumps({"c": number}).decode()[1:-1]  # '"c":"+44..."', as every event has it
    mine: dict[int, list[bytes]] = {}
    async for shard, eid, raw in reports.entries(store, shards, needle):
        if orjson.loads(raw).get("c") == number:
            mine.setdefault(shard, []).append(eid)
    removed = 0
    for shard, ids in mine.items():
        for i in range(0, len(ids), 1000):
            removed += int(await store.redis.xdel(keys.flow_events(shard), *ids[i : i + 1000]))
    return removed


async def _forget_webhook_letters(store: Store, number: str) -> int:
    """Dead letters and replays waiting for a CRM webhook (``p:whdead:{wI}``, ``p:whre:{wI}``) that are
    about ``number``: they hold its events, so they go too."""
    removed = 0
    needle = orjson.dumps(number)
    for pattern in keys.webhook_letter_patterns():
        async for stream in store.redis.scan_iter(match=pattern, count=1000, _type="STREAM"):
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await store.redis.xrange(stream))
            mine = [eid for eid, fields in entries if any(needle in v for v in fields.values())]
            if mine:
                removed += int(await store.redis.xdel(stream, *mine))
    return removed


def _glob_escape(text: str) -> str:
    """``text`` matched literally in a SCAN pattern (``*?[]\\`` escaped)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
