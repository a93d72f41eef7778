"""Every Redis key Parley uses is built here, and nowhere else.

Layout 2 (issue 18): every Lua script touches one Redis Cluster slot. The unit of placement is
the **shard**: a contact belongs to shard ``crc32(number) % engine.shards`` for life, and every
key a turn touches (the contact's own keys, its shard's inbound stream, timers, outbound lanes,
CRM calls and outcome events) carries that shard's hash tag ``T`` (:func:`shard_tag`), so the
turn's one commit script runs on one slot, on one node. Shard tags are chosen so that shard
``s`` lands near slot ``bitreverse10(s) * 16``: any power-of-two number of shards is spread
evenly over the slot range, so the masters of a cluster created with ``redis-cli --cluster
create`` (contiguous, equal slot ranges) hold equal shares of the shards. Keys that are not a
shard's carry their own tag (``{GW:K}`` for a connector's receipt maps, ``{l}`` for leases) or
are one key alone.

Per contact N in shard S (T = shard_tag(S)); functions take ``(number, shard)``:

    p:c:TN             hash    contact profile: f fields, tg tags, l, tz, ca/ua ms  no TTL
    p:s:TN             string  conversation session (orjson, versioned)       TTL = flow expiry
    p:ml:TN            zset    message log index: message id -> sequence      trimmed
    p:mh:TN            hash    message records: message id -> orjson          trimmed with ml
    p:g:TN             hash    consent: cs status, src source, at ms; sup suppression reason  no TTL
    p:cl:TN            stream  consent ledger: every change, its source and cause        no TTL
    p:cl:h:TD          stream  the consent ledger of an erased contact, D = HMAC of the number  no TTL
    p:sent:TN          zset    counted sends (message id -> ms) for frequency caps   TTL = longest cap
    p:att:TN           hash    N's last journey touch: f flow, xp, arm, st start, at ms  TTL = window
    p:cv:TN:ID         string  a CRM conversion event already recorded (its id)     TTL = dedupe window
    p:mo:TN:GW:K       hash    SMPP: parts of a multipart text from N (K = to|ref|total): seq -> text
    p:ho:TN            hash    N is handed off to a person (engine/conversation/inbox.py): st open|
                               claimed, at ms, why, f flow, by operator, ca ms, lt/nt last text  no TTL

Per shard S (T = shard_tag(S)); functions take ``shard``:

    p:in:T             stream  inbound events of shard S (texts, flow starts, fired timers)
    p:tm:T             zset    timers of shard S: "N|kind|token" -> due ms (wait timeouts, expiry;
                               kind k: a campaign's next fire, token CAMPAIGN:EVENT)
    p:dd:T:K:B         hash    inbound dedupe of shard S, slot K, time bucket B (engine/core/idmaps.py):
                               "GW:ID:h" (h = crc32 of N) -> "<payload digest> <entry id>"
                               expires whole dedupe window after B ends
    p:out:T:GW         stream  reply lane of gateway GW for shard S's contacts
    p:out:T:GW:bulk    stream  bulk lane of gateway GW for shard S's contacts (sent after replies)
    p:calls:T          stream  CRM webhook calls of shard S's turns, waiting for a caller
    p:fx:T             stream  flow outcome events of shard S's contacts (runs started, replies,
                               results, ends, message statuses; engine/conversation/outcomes.py),
                               trimmed to engine.outcome_events_max per shard
    p:ix:T             zset    listing index of shard S's contacts (engine/crm/listing.py), all scores 0,
                               members ordered by bytes: "c|CA|N", "u|UA|N", "t|TAG|CA|N" per tag,
                               "g|STATUS|CA|N" (consent, when given); CA/UA created/updated ms, 13 digits
    p:ib:T             zset    the inbox of shard S: number -> handed off at ms (its p:ho:TN is there)
    p:hv:T:U           string  hand-over of cancellable unit U (a single message's id, or a journey
                               start's "st-ID/D", D a digest of the number): "p|expires ms"
                               pending, "h" handed to a gateway,
                               "x" cancelled, "e" expired (engine/crm/sends.py)   TTL
    p:sx:T             hash    journey starts cancelled: start id -> ms (checked by the turn)  TTL 90d
    p:msg:T:ID         string  single message ID: json {c number, s first status, at, due, tm}  TTL log
    p:ik:T:D:K         string  idempotency key K of a single send to one of shard S's contacts (D a
                               digest of the number) ->
                               its message id                          TTL = engine.dedupe_window

A connector's (one slot per id slot K, so receipt scripts touch one slot):

    p:pid:{GW:K}:B     hash    provider ids of GW's sends in slot K, time bucket B (engine/core/idmaps.py):
                               provider id -> "N message id"; expires receipt_window after B ends
    p:dlrp:{GW:K}:ID   string  a receipt that came before its send was recorded: "status|error|ms", TTL 1d
    p:seg:{GW:K}:B     hash    SMPP: segments' SMSC ids in slot K, bucket B -> "first id|parts|part"
    p:roll:{GW:K}:ID   hash    SMPP: receipts per part of a multipart message (K = the slot of its
                               first part's id ID): part -> "status|error", TTL receipt_window
    p:slots:{GW}       zset    the connector's rate: its last send slots ("us:segments" ->
                               segments booked so far), the last rate + 1 of them
    p:binds:{GW}       hash    SMPP: the connector's binds, global across processes: bind index ->
                               "holder|expires ms" (at most ``binds`` of them)
    p:gwerr:{GW}       stream  the connector's recent send errors (gateways/recent_errors.py): at ms,
                               kind (retry, rejected, crash), message id, error (numbers masked); last 100

An SMPP server account's (ESMEs binding into Parley; tag ``{sm:A}``, A its system_id, so each of
its scripts touches one slot):

    p:smq:{sm:A}       stream  receipts and MOs waiting for A's receiver/transceiver binds (consumer
                               group ``binds``; an entry is deleted on deliver_sm_resp OK), bounded by
                               count and age (gateways/smpp/server_queue.py)
    p:smseen:{sm:A}:D  string  an MO (D a digest of gateway and provider id) already queued for A  TTL 1d
    p:smbinds:{sm:A}   zset    A's open binds across every process: bind id -> lease expiry ms
    p:slots:{sm:A}     zset    A's submit rate (rate.lua, as a connector's send rate)
    p:smparts:{sm:A}:D hash    parts of a long message A submits (D a digest of source, destination,
                               reference, total): part -> text, "id" -> the message id  TTL parts_ttl

Leases (tag ``{l}``, so lease.lua touches one slot), per role R (``worker``; ``sender:GW``, the
lanes of connector GW; ``webhooks``, one "shard": which process runs the outcome webhooks,
engine/app/singleton.py):

    p:{l}:lease:R      hash    shard -> "holder|expires ms": which process of role R reads which shard
    p:{l}:live:R       zset    holder -> heartbeat expiry ms (the live processes of role R)
    p:{l}:changed:R    channel pub/sub: a holder joined or left, or shards were given up (its id)

Alone (one key per script call, or written by plain commands):

    p:dead             stream  events a worker failed on repeatedly (for inspection and replay)
    p:whre:{wI}        stream  CRM outcome webhook I: dead letters replayed, waiting to be sent again
    p:whdead:{wI}      stream  CRM outcome webhook I: events it gave up on, with the last error
    p:flow:NAME:D      string  the YAML of flow NAME at digest D (sessions finish on their version)
    p:cc:D             string  a CRM GET's answer, reused for the call's cache time   TTL = cache
    p:erasure:key      string  the HMAC key for D when governance.erasure_key is not set   no TTL
    p:start:ID         hash    a journey start's request-time counts (flow, requested, queued...)  TTL 90d
    p:starts           zset    every journey start of the last 90 days: start id -> requested at ms
    p:segments         hash    saved segments (named audiences): name -> definition (orjson)
    p:xa:EXP           hash    experiment EXP's assignments: number -> arm or "holdout"   no TTL
    p:cpg              hash    campaigns defined through the API: name -> definition (JSON)  no TTL
    p:cpb:NAME         hash    campaign NAME's last backfill: digest, state, scanned, scheduled, at
    p:layout           string  the key layout version of this database ("2")
    p:cs:H             string  a console session (engine/console/sessions.py), H = SHA-256 of its cookie
                               token: orjson {u user, c csrf token, at created ms, s seen ms}  TTL = idle
    p:cf:U             zset    failed console logins of a user name, U = its SHA-256 (first 20 hex):
                               attempt id -> ms                                  TTL = lockout window
    p:caudit           stream  the console's audit log: every console action (bounded)
    p:csecret          string  the console's key for unmask references (made once)   no TTL
    p:csim:U:NAME      string  the console's flow simulator: console user U's simulation of flow
                               NAME (U a digest of the user's name; engine/console/simulator.py)  TTL 1h

Changing ``engine.shards`` moves contacts between shards and so renames their keys: it is a
migration (``parley migrate``), never a restart.
"""

from __future__ import annotations

import hashlib
import zlib
from functools import lru_cache

from redis.crc import key_slot

PREFIX = "p"
#: The key layout this code reads and writes (``p:layout``).
LAYOUT = 2
#: Redis Cluster's slot count.
SLOTS = 16384
#: The most shards a deployment may have (engine.shards), and so the tag table's size.
MAX_SHARDS = 1024

#: Consumer group of engine workers on every inbound shard stream.
INBOUND_GROUP = "engine"
#: Consumer group of senders on every outbound stream.
OUTBOUND_GROUP = "senders"
#: Consumer group of callers on the calls streams.
CALLS_GROUP = "callers"

LANES = ("reply", "bulk")


def shard_of(contact: str, shards: int) -> int:
    """The shard a contact belongs to (stable across processes and restarts)."""
    return zlib.crc32(contact.encode()) % shards


def _bitreverse10(n: int) -> int:
    return int(f"{n:010b}"[::-1], 2)


@lru_cache(maxsize=MAX_SHARDS)
def shard_tag(shard: int) -> str:
    """The hash tag of ``shard``'s keys, braces included: ``{S.j}``, with ``j`` the first
    suffix whose slot falls in the 16-slot window at ``bitreverse10(S) * 16`` (so shards spread
    evenly over the slot range; about a thousand CRC16s per shard, once per process)."""
    if not 0 <= shard < MAX_SHARDS:
        raise ValueError(f"shard {shard} out of range 0..{MAX_SHARDS - 1}")
    width = SLOTS // MAX_SHARDS
    low = _bitreverse10(shard) * width
    j = 0
    while True:
        tag = f"{shard}.{j}"
        if low <= key_slot(tag.encode()) < low + width:
            return "{" + tag + "}"
        j += 1


def slot_of_shard(shard: int) -> int:
    """The Redis Cluster slot of every key of ``shard``."""
    return key_slot(shard_tag(shard).encode())


def layout() -> str:
    return f"{PREFIX}:layout"


# -- per contact (the contact's shard's tag) ---------------------------------------------------


def _c(kind: str, number: str, shard: int) -> str:
    return f"{PREFIX}:{kind}:{shard_tag(shard)}{number}"


def contact(number: str, shard: int) -> str:
    return _c("c", number, shard)


def session(number: str, shard: int) -> str:
    return _c("s", number, shard)


def message_index(number: str, shard: int) -> str:
    return _c("ml", number, shard)


def message_records(number: str, shard: int) -> str:
    return _c("mh", number, shard)


def governance(number: str, shard: int) -> str:
    return _c("g", number, shard)


def consent_ledger(number: str, shard: int) -> str:
    return _c("cl", number, shard)


def erased_consent_ledger(digest: str, shard: int) -> str:
    """The consent ledger of an erased contact, named by a keyed hash of its number
    (engine/crm/erasure.py), so the history stays provable without the number in clear; in the
    shard the number was in (whoever proves consent for a number knows the number)."""
    return f"{PREFIX}:cl:h:{shard_tag(shard)}{digest}"


def counted_sends(number: str, shard: int) -> str:
    return _c("sent", number, shard)


def attribution(number: str, shard: int) -> str:
    """The contact's last journey touch (flow, experiment, arm, start, at), for conversions."""
    return _c("att", number, shard)


def conversion_seen(number: str, shard: int, event_id: str) -> str:
    """A CRM conversion event already recorded (its ``id``), for the dedupe window."""
    return f"{_c('cv', number, shard)}:{event_id}"


def smpp_mo_parts(number: str, shard: int, gateway: str, to: str, ref: int, total: int) -> str:
    """The parts received so far of one multipart text from ``number`` (reassembly)."""
    return f"{_c('mo', number, shard)}:{gateway}:{to}|{ref}|{total}"


def handoff(number: str, shard: int) -> str:
    """The contact's place in the inbox (handed off to a person), while it is there."""
    return _c("ho", number, shard)


def contact_pattern() -> str:
    """SCAN pattern of every contact profile key (run on every master of a cluster)."""
    return f"{PREFIX}:c:{{*}}*"


def number_of_contact_key(key: str) -> str:
    """The number in a contact profile key (the inverse of :func:`contact`)."""
    head = f"{PREFIX}:c:{{"
    assert key.startswith(head) and "}" in key, key
    return key[key.index("}") + 1 :]


# -- per shard -----------------------------------------------------------------------------------


def contact_index(shard: int) -> str:
    """The listing index of shard ``shard``'s contacts (one key per shard, merged on read)."""
    return f"{PREFIX}:ix:{shard_tag(shard)}"


def inbound_stream(shard: int) -> str:
    return f"{PREFIX}:in:{shard_tag(shard)}"


def timers(shard: int) -> str:
    return f"{PREFIX}:tm:{shard_tag(shard)}"


def timer_member(number: str, kind: str, token: str) -> str:
    """A timer's identity: which contact, which kind (``w`` wait timeout, ``x`` expiry), and the
    token that says which wait or session it belongs to (a stale timer no longer matches)."""
    return f"{number}|{kind}|{token}"


def timer_member_prefix(number: str) -> str:
    """What every timer member of ``number`` starts with (erasure finds them by it)."""
    return f"{number}|"


def inbound_dedupe(shard: int, slot: int, bucket: int) -> str:
    """The dedupe marks of one shard's inbound texts in one slot and time bucket."""
    return f"{PREFIX}:dd:{shard_tag(shard)}:{slot}:{bucket}"


def inbound_dedupe_field(number: str, gateway: str, provider_id: str) -> str:
    """A text's field in :func:`inbound_dedupe`: gateway and provider id, and a 32-bit hash of the
    sender (two senders' texts with one id stay apart; the number is not kept in clear)."""
    return f"{gateway}:{provider_id}:{zlib.crc32(number.encode()):08x}"


def outbound_stream(shard: int, gateway: str, lane: str = "reply") -> str:
    """Shard ``shard``'s outbound lane of ``gateway``: ``reply`` (someone is waiting) or ``bulk``."""
    base = f"{PREFIX}:out:{shard_tag(shard)}:{gateway}"
    return base if lane == "reply" else f"{base}:bulk"


def calls(shard: int) -> str:
    """CRM webhook calls that shard ``shard``'s turns asked for."""
    return f"{PREFIX}:calls:{shard_tag(shard)}"


def flow_events(shard: int) -> str:
    """The outcome events of shard ``shard``'s contacts (reports, result exports, CRM event
    webhooks read every shard's; each is in order, there is no order across shards)."""
    return f"{PREFIX}:fx:{shard_tag(shard)}"


def inbox(shard: int) -> str:
    """Shard ``shard``'s inbox index: its handed-off contacts by when (merged over shards on read)."""
    return f"{PREFIX}:ib:{shard_tag(shard)}"


def handover(shard: int, unit: str) -> str:
    """Whether cancellable unit ``unit`` (a single message's id, or :func:`start_unit`) was
    handed to a gateway or cancelled: the one key a cancel and a sender race on, atomically."""
    return f"{PREFIX}:hv:{shard_tag(shard)}:{unit}"


def number_digest(number: str) -> str:
    """A number as it may appear in a key name that outlives the contact's erasure (hand-over
    and idempotency keys): a digest, never the number itself."""
    return hashlib.blake2b(number.encode(), digest_size=8).hexdigest()


def start_unit(start_id: str, number: str) -> str:
    """The cancellable unit of a journey start's delivery to one contact (every message its turn
    sends). The number goes in as a digest: no key name carries a phone number, so erasing a
    contact leaves none behind in the hand-over keys that outlive it. ``number`` "": the prefix
    every unit of the start shares."""
    if not number:
        return f"{start_id}/"
    return f"{start_id}/{number_digest(number)}"


def cancelled_starts(shard: int) -> str:
    """Journey starts cancelled (start id -> ms), so a start event still queued is skipped."""
    return f"{PREFIX}:sx:{shard_tag(shard)}"


def single_message(shard: int, message_id: str) -> str:
    """A single message's (``POST /v1/messages``) owner and first status, until it is in the log."""
    return f"{PREFIX}:msg:{shard_tag(shard)}:{message_id}"


def send_idempotency(shard: int, key: str) -> str:
    """A single send's idempotency key, scoped to its recipient's shard -> its message id."""
    return f"{PREFIX}:ik:{shard_tag(shard)}:{key}"


# -- leases ------------------------------------------------------------------------------------


def leases(role: str = "worker") -> str:
    """Which process of ``role`` reads which shard: shard -> "holder|expires ms"."""
    return f"{PREFIX}:{{l}}:lease:{role}"


def live(role: str = "worker") -> str:
    """The live processes of ``role``: holder -> heartbeat expiry ms."""
    return f"{PREFIX}:{{l}}:live:{role}"


def lease_changes(role: str = "worker") -> str:
    """A pub/sub channel, not a key: lease.lua tells the holders of ``role`` the shares changed."""
    return f"{PREFIX}:{{l}}:changed:{role}"


# -- a connector's ---------------------------------------------------------------------------


def provider_ids(gateway: str, slot: int, bucket: int) -> str:
    """Provider ids of ``gateway``'s sends in one slot and time bucket -> "N message-id"."""
    return f"{PREFIX}:pid:{{{gateway}:{slot}}}:{bucket}"


def parked_receipt(gateway: str, slot: int, pid: str) -> str:
    """A receipt that came before its send was recorded, in its id's slot of ``gateway``."""
    return f"{PREFIX}:dlrp:{{{gateway}:{slot}}}:{pid}"


def gateway_errors(gateway: str) -> str:
    """The connector's last send errors, for the console's Gateways page."""
    return f"{PREFIX}:gwerr:{{{gateway}}}"


def rate(gateway: str) -> str:
    """The connector's booked send slots (``rate.lua``), one key for every process."""
    return f"{PREFIX}:slots:{{{gateway}}}"


def binds(gateway: str) -> str:
    """An SMPP connector's binds across every process: bind index -> "holder|expires ms"."""
    return f"{PREFIX}:binds:{{{gateway}}}"


def smpp_segments(gateway: str, slot: int, bucket: int) -> str:
    """Segments of multipart messages sent over SMPP, by the SMSC's id for each, in one slot and
    time bucket -> "first id|parts|part"."""
    return f"{PREFIX}:seg:{{{gateway}:{slot}}}:{bucket}"


def smpp_awaiting(gateway: str) -> str:
    """SMPP messages sent and waiting for their final receipt, for query_sm when it is overdue:
    zset provider id -> sent (or last queried) at ms. Only with the connector's ``query_after``."""
    return f"{PREFIX}:aw:{{{gateway}}}"


def smpp_awaiting_info(gateway: str) -> str:
    """What a query_sm for each of them needs: provider id -> "queries|ton|npi|source address"."""
    return f"{PREFIX}:awi:{{{gateway}}}"


def smpp_rollup(gateway: str, slot: int, first_id: str) -> str:
    """The receipts of a multipart message's parts, by the SMSC id of its first part (in that
    id's slot ``slot``)."""
    return f"{PREFIX}:roll:{{{gateway}:{slot}}}:{first_id}"


# -- an SMPP server account's ---------------------------------------------------------------

#: The consumer group of an account's queue: its binds, in every process.
SMPP_SERVER_GROUP = "binds"


def _sm(account: str) -> str:
    return f"{{sm:{account}}}"


def smpp_server_queue(account: str) -> str:
    """Receipts and MOs waiting for account ``account``'s binds."""
    return f"{PREFIX}:smq:{_sm(account)}"


def smpp_server_seen(account: str, digest: str) -> str:
    """An MO already queued for ``account`` (``digest`` of its gateway and provider id)."""
    return f"{PREFIX}:smseen:{_sm(account)}:{digest}"


def smpp_server_binds(account: str) -> str:
    """The account's open binds, global: bind id -> lease expiry ms."""
    return f"{PREFIX}:smbinds:{_sm(account)}"


def smpp_server_rate(account: str) -> str:
    """The account's booked submit slots (rate.lua)."""
    return f"{PREFIX}:slots:{_sm(account)}"


def smpp_server_parts(account: str, digest: str) -> str:
    """The parts of one long message the account is submitting."""
    return f"{PREFIX}:smparts:{_sm(account)}:{digest}"


# -- alone -----------------------------------------------------------------------------------


def dead_letters() -> str:
    return f"{PREFIX}:dead"


def erasure_key() -> str:
    return f"{PREFIX}:erasure:key"


def flow_source(name: str, digest: str) -> str:
    return f"{PREFIX}:flow:{name}:{digest}"


def start_record(start_id: str) -> str:
    """A journey start's request-time counts (engine/crm/journeys.py)."""
    return f"{PREFIX}:start:{start_id}"


def start_list() -> str:
    """Every journey start of the last 90 days by id, scored by when it was asked for."""
    return f"{PREFIX}:starts"


def segments() -> str:
    """The saved segments: name -> definition."""
    return f"{PREFIX}:segments"


def assignments(experiment: str) -> str:
    """Which arm (or the holdout) each contact of an experiment was put in: number -> arm."""
    return f"{PREFIX}:xa:{experiment}"


def campaigns() -> str:
    """The campaigns defined through the API (engine/crm/campaigns.py): name -> JSON."""
    return f"{PREFIX}:cpg"


def campaign_backfill(name: str) -> str:
    """Campaign ``name``'s last backfill over the contacts: digest, state, counts."""
    return f"{PREFIX}:cpb:{name}"


def webhook_group(index: int, url: str) -> str:
    """The consumer group of outcome webhook ``index`` on every ``p:fx:T``: a new URL is a new cursor."""
    return f"webhook-{index}-{zlib.crc32(url.encode()):08x}"


def webhook_retry(index: int) -> str:
    """Dead letters of webhook ``index`` replayed, read by its dispatcher with the ``p:fx:T``."""
    return f"{PREFIX}:whre:{{w{index}}}"


def webhook_dead(index: int) -> str:
    """Events webhook ``index`` gave up on (a 4xx, or out of attempts), with the last error."""
    return f"{PREFIX}:whdead:{{w{index}}}"


def call_cache(digest: str) -> str:
    """A CRM call's answer, reused for its flow's ``cache`` time (by a digest of the request)."""
    return f"{PREFIX}:cc:{digest}"


def console_session(token_digest: str) -> str:
    """A console session, by the SHA-256 of its cookie token (the token itself is never stored)."""
    return f"{PREFIX}:cs:{token_digest}"


def console_failures(user: str) -> str:
    """Failed console logins of ``user`` (the name as typed, known or not) in the lockout window."""
    return f"{PREFIX}:cf:{hashlib.sha256(user.encode()).hexdigest()[:20]}"


def console_audit() -> str:
    """The console's audit stream (engine/console/audit.py)."""
    return f"{PREFIX}:caudit"


def console_secret() -> str:
    """The console's key for the references the ``num`` filter hands the unmask action."""
    return f"{PREFIX}:csecret"


def console_simulation(user: str, flow: str) -> str:
    """A console user's simulation of a flow (in memory otherwise: nothing else is written)."""
    digest = hashlib.blake2b(user.encode(), digest_size=8).hexdigest()
    return f"{PREFIX}:csim:{digest}:{flow}"


def webhook_letter_patterns() -> tuple[str, str]:
    """SCAN patterns of every webhook's dead letters and replays (erasure looks through them)."""
    return f"{PREFIX}:whdead:*", f"{PREFIX}:whre:*"
