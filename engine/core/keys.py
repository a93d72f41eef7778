"""Every Redis key Parley uses is built here, and nowhere else.

Per-contact keys carry the contact's E.164 number as a hash tag (``{+447700900123}``), so all
of one contact's keys live in one Redis Cluster slot and a script touching them stays
cluster-safe. Shared keys (streams) are named by shard or gateway.

    p:c:{N}            hash    contact profile: f fields, tg tags, l, tz, ca/ua ms  no TTL
    p:s:{N}            string  conversation session (orjson, versioned)       TTL = flow expiry
    p:ml:{N}           zset    message log index: message id -> sequence      trimmed
    p:mh:{N}           hash    message records: message id -> orjson          trimmed with ml
    p:dd:S:K:B         hash    inbound dedupe of shard S, slot K, time bucket B (engine/core/idmaps.py):
                               "GW:ID:h" (h = crc32 of N) -> "<payload digest> <entry id>"
                               expires whole dedupe window after B ends
    p:in:S             stream  inbound events for shard S (texts, flow starts, fired timers)
    p:tm:S             zset    timers of shard S: "N|kind|token" -> due ms (wait timeouts, expiry)
    p:out:GW           stream  reply lane of gateway GW: replies to a customer's text, confirmations
    p:out:GW:bulk      stream  bulk lane of gateway GW: journey starts, reminders (sent after replies)
    p:pid:{GW:K}:B     hash    provider ids of GW's sends in slot K, time bucket B (engine/core/idmaps.py):
                               provider id -> "N message id" (receipts find the message by it);
                               expires whole receipt_window (72h) after B ends
    p:dlrp:{GW:K}:ID   string  a receipt that came before its send was recorded: "status|error|ms", TTL 1d
    p:slots:GW         zset    the connector's rate: its last send slots ("us:segments" ->
                               segments booked so far), the last rate + 1 of them
    p:binds:{GW}       hash    SMPP: the connector's binds, global across processes: bind index ->
                               "holder|expires ms" (at most ``binds`` of them)
    p:seg:{GW:K}:B     hash    SMPP: segments' SMSC ids in slot K, bucket B -> "first id|parts|part"
                               (as p:pid; only parts of multipart messages)
    p:roll:GW:ID       hash    SMPP: receipts per part of a multipart message: part -> "status|error",
                               TTL receipt_window
    p:mo:{N}:GW:K      hash    SMPP: parts of a multipart text from N (K = to|ref|total): seq -> text
    p:dead             stream  events a worker failed on repeatedly (for inspection and replay)
    p:fx               stream  flow outcome events: runs started, replies, results, ends, message
                               statuses (engine/conversation/outcomes.py); trimmed to
                               engine.outcome_events_max
    p:whre:I           stream  CRM outcome webhook I: dead letters replayed, waiting to be sent again
    p:whdead:I         stream  CRM outcome webhook I: events it gave up on, with the last error
    p:flow:NAME:D      string  the YAML of flow NAME at digest D (sessions finish on their version)
    p:calls            stream  CRM webhook calls waiting for a caller
    p:cc:D             string  a CRM GET's answer, reused for the call's cache time   TTL = cache
    p:g:{N}            hash    consent: cs status, src source, at ms; sup suppression reason  no TTL
    p:cl:{N}           stream  consent ledger: every change, its source and cause        no TTL
    p:cl:h:D           stream  the consent ledger of an erased contact, D = HMAC of the number  no TTL
    p:erasure:key      string  the HMAC key for D when governance.erasure_key is not set   no TTL
    p:sent:{N}         zset    counted sends (message id -> ms) for frequency caps   TTL = longest cap
    p:lease            hash    shard -> "worker|expires ms": which worker reads which shard
    p:start:ID         hash    a journey start's request-time counts (flow, requested, queued...)  TTL 90d
    p:xa:EXP           hash    experiment EXP's assignments: number -> arm or "holdout"   no TTL
    p:att:{N}          hash    N's last journey touch: f flow, xp, arm, st start, at ms  TTL = window
    p:cv:{N}:ID        string  a CRM conversion event already recorded (its id)     TTL = dedupe window
    p:workers          zset    worker -> heartbeat expiry ms (the live workers)
    p:lease:changed    channel pub/sub: a worker joined or left, or shards were given up (its id)

Known limit: the turn commit script writes ``p:out:GW`` next to the contact's keys, which is
one server in a single Redis but two slots in a Cluster; cluster support moves that write to a
per-contact outbox relayed by the sender.

Where the bookkeeping maps live, for cluster support (issue 15): an id's buckets in ``p:pid``,
``p:seg`` and its parked receipt ``p:dlrp`` share the hash tag ``{GW:K}`` (K = the id's slot,
the same in all three), so the receipt scripts (receipt.lua, smpp_receipt.lua) touch one slot.
status.lua writes that slot next to the contact's message records ``p:mh:{N}`` and the lane
``p:out:GW`` (like commit.lua, three slots in a Cluster: cluster support splits it into the
record and a receipt-map write, or keys the map by the contact). ``p:dd:S:K:B`` is named by the
shard S it is written with (intake.lua appends to ``p:in:S``): cluster support tags both with
``{S}``. smpp_parts.lua writes one part's slot per segment: in a Cluster, one call per part.

Migration (issue 15): the per-message string keys of earlier releases (``p:pid:GW:ID``,
``p:seg:GW:ID``, ``p:dd:{N}:GW:ID``) are still read, by :func:`legacy_provider_id`,
:func:`legacy_smpp_segment` and :func:`legacy_inbound_dedupe`, so receipts and retries of
messages from before an upgrade are still matched until those keys expire (7 days, 1 day);
nothing writes them any more.
"""

from __future__ import annotations

import zlib

PREFIX = "p"

#: Consumer group of engine workers on every inbound shard stream.
INBOUND_GROUP = "engine"
#: Consumer group of senders on every outbound stream.
OUTBOUND_GROUP = "senders"


def shard_of(contact: str, shards: int) -> int:
    """The inbound shard a contact's events go to (stable across processes and restarts)."""
    return zlib.crc32(contact.encode()) % shards


def contact(number: str) -> str:
    return f"{PREFIX}:c:{{{number}}}"


def session(number: str) -> str:
    return f"{PREFIX}:s:{{{number}}}"


def message_index(number: str) -> str:
    return f"{PREFIX}:ml:{{{number}}}"


def message_records(number: str) -> str:
    return f"{PREFIX}:mh:{{{number}}}"


def governance(number: str) -> str:
    return f"{PREFIX}:g:{{{number}}}"


def consent_ledger(number: str) -> str:
    return f"{PREFIX}:cl:{{{number}}}"


def erased_consent_ledger(digest: str) -> str:
    """The consent ledger of an erased contact, named by a keyed hash of its number
    (engine/crm/erasure.py), so the history stays provable without the number in clear."""
    return f"{PREFIX}:cl:h:{digest}"


def erasure_key() -> str:
    return f"{PREFIX}:erasure:key"


def counted_sends(number: str) -> str:
    return f"{PREFIX}:sent:{{{number}}}"


def inbound_dedupe(shard: int, slot: int, bucket: int) -> str:
    """The dedupe marks of one shard's inbound texts in one slot and time bucket."""
    return f"{PREFIX}:dd:{shard}:{slot}:{bucket}"


def inbound_dedupe_field(number: str, gateway: str, provider_id: str) -> str:
    """A text's field in :func:`inbound_dedupe`: gateway and provider id, and a 32-bit hash of the
    sender (two senders' texts with one id stay apart; the number is not kept in clear)."""
    return f"{gateway}:{provider_id}:{zlib.crc32(number.encode()):08x}"


def legacy_inbound_dedupe(number: str, gateway: str, provider_id: str) -> str:
    """An earlier release's dedupe key (one string per text): read during an upgrade only."""
    return f"{PREFIX}:dd:{{{number}}}:{gateway}:{provider_id}"


def inbound_stream(shard: int) -> str:
    return f"{PREFIX}:in:{shard}"


def timers(shard: int) -> str:
    return f"{PREFIX}:tm:{shard}"


def timer_member(number: str, kind: str, token: str) -> str:
    """A timer's identity: which contact, which kind (``w`` wait timeout, ``x`` expiry), and the
    token that says which wait or session it belongs to (a stale timer no longer matches)."""
    return f"{number}|{kind}|{token}"


def timer_member_prefix(number: str) -> str:
    """What every timer member of ``number`` starts with (erasure finds them by it)."""
    return f"{number}|"


def outbound_stream(gateway: str, lane: str = "reply") -> str:
    """A gateway's outbound lane: ``reply`` (someone is waiting) or ``bulk``."""
    return f"{PREFIX}:out:{gateway}" if lane == "reply" else f"{PREFIX}:out:{gateway}:bulk"


LANES = ("reply", "bulk")


def dead_letters() -> str:
    return f"{PREFIX}:dead"


def calls() -> str:
    return f"{PREFIX}:calls"


#: Consumer group of callers on the calls stream.
CALLS_GROUP = "callers"


def leases() -> str:
    return f"{PREFIX}:lease"


def workers() -> str:
    return f"{PREFIX}:workers"


def lease_changes() -> str:
    """A pub/sub channel, not a key: lease.lua tells the workers the shares changed."""
    return f"{PREFIX}:lease:changed"


def flow_source(name: str, digest: str) -> str:
    return f"{PREFIX}:flow:{name}:{digest}"


def provider_ids(gateway: str, slot: int, bucket: int) -> str:
    """Provider ids of ``gateway``'s sends in one slot and time bucket -> "N message-id"."""
    return f"{PREFIX}:pid:{{{gateway}:{slot}}}:{bucket}"


def legacy_provider_id(gateway: str, pid: str) -> str:
    """An earlier release's provider-id key (one string per send): read during an upgrade only."""
    return f"{PREFIX}:pid:{gateway}:{pid}"


def parked_receipt(gateway: str, slot: int, pid: str) -> str:
    """A receipt that came before its send was recorded, in its id's slot of ``gateway``."""
    return f"{PREFIX}:dlrp:{{{gateway}:{slot}}}:{pid}"


def rate(gateway: str) -> str:
    """The connector's booked send slots (``rate.lua``; was the string ``p:rate:GW``)."""
    return f"{PREFIX}:slots:{gateway}"


def binds(gateway: str) -> str:
    """An SMPP connector's binds across every process: bind index -> "holder|expires ms"."""
    return f"{PREFIX}:binds:{{{gateway}}}"


def smpp_segments(gateway: str, slot: int, bucket: int) -> str:
    """Segments of multipart messages sent over SMPP, by the SMSC's id for each, in one slot and
    time bucket -> "first id|parts|part"."""
    return f"{PREFIX}:seg:{{{gateway}:{slot}}}:{bucket}"


def legacy_smpp_segment(gateway: str, smsc_id: str) -> str:
    """An earlier release's segment key (one string per part): read during an upgrade only."""
    return f"{PREFIX}:seg:{gateway}:{smsc_id}"


def smpp_rollup(gateway: str, first_id: str) -> str:
    """The receipts of a multipart message's parts, by the SMSC id of its first part."""
    return f"{PREFIX}:roll:{gateway}:{first_id}"


def smpp_mo_parts(number: str, gateway: str, to: str, ref: int, total: int) -> str:
    """The parts received so far of one multipart text from ``number`` (reassembly)."""
    return f"{PREFIX}:mo:{{{number}}}:{gateway}:{to}|{ref}|{total}"


def flow_events() -> str:
    """The outcome events of every flow (reports, result exports, CRM event webhooks)."""
    return f"{PREFIX}:fx"


def contact_pattern() -> str:
    """SCAN pattern of every contact profile key."""
    return f"{PREFIX}:c:{{*}}"


def number_of_contact_key(key: str) -> str:
    """The number in a contact profile key (the inverse of :func:`contact`)."""
    head = contact("")[:-1]  # "p:c:{"
    assert key.startswith(head) and key.endswith("}"), key
    return key[len(head) : -1]


def start_record(start_id: str) -> str:
    """A journey start's request-time counts (engine/crm/journeys.py)."""
    return f"{PREFIX}:start:{start_id}"


def assignments(experiment: str) -> str:
    """Which arm (or the holdout) each contact of an experiment was put in: number -> arm."""
    return f"{PREFIX}:xa:{experiment}"


def attribution(number: str) -> str:
    """The contact's last journey touch (flow, experiment, arm, start, at), for conversions."""
    return f"{PREFIX}:att:{{{number}}}"


def webhook_group(index: int, url: str) -> str:
    """The consumer group of outcome webhook ``index`` on ``p:fx``: a new URL is a new cursor."""
    return f"webhook-{index}-{zlib.crc32(url.encode()):08x}"


def webhook_retry(index: int) -> str:
    """Dead letters of webhook ``index`` replayed, read by its dispatcher with ``p:fx``."""
    return f"{PREFIX}:whre:{index}"


def webhook_dead(index: int) -> str:
    """Events webhook ``index`` gave up on (a 4xx, or out of attempts), with the last error."""
    return f"{PREFIX}:whdead:{index}"


def conversion_seen(number: str, event_id: str) -> str:
    """A CRM conversion event already recorded (its ``id``), for the dedupe window."""
    return f"{PREFIX}:cv:{{{number}}}:{event_id}"


def call_cache(digest: str) -> str:
    """A CRM call's answer, reused for its flow's ``cache`` time (by a digest of the request)."""
    return f"{PREFIX}:cc:{digest}"


def webhook_letter_patterns() -> tuple[str, str]:
    """SCAN patterns of every webhook's dead letters and replays (erasure looks through them)."""
    return f"{PREFIX}:whdead:*", f"{PREFIX}:whre:*"
