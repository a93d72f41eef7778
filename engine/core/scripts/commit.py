"""The typed call of commit.lua: its 15 keys and 23 fixed arguments (then five variable-length
lists and the inbox change) built from named fields, so a caller cannot put an argument in the
wrong place. The
script's header comment is the contract; :meth:`CommitArgs.to_argv` is the one place that
follows it, and tests/test_commit_script.py calls the script through it with edge inputs."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.core import keys


@dataclass(frozen=True)
class ContactChange:
    """ARGV[11..14]: write the contact's fields and tags, if its updated-at is still ``loaded_ua``
    (0: the contact did not exist), stamping ``new_ua``."""

    loaded_ua: int
    fields_json: str
    tags_json: str
    new_ua: int


@dataclass(frozen=True)
class Outbound:
    """One outbound message: its id, text and gate kind ("s" system, "r" reply, "c" business; "n"
    and "m" the marketing reply and business message: engine/governance/consent.py gate_kind)."""

    id: str
    text: str
    kind: str


@dataclass
class CommitArgs:
    """Everything one turn commits for one contact (commit.lua's header says what each does)."""

    #: The session version the turn loaded (0: none yet).
    version: int
    #: The inbound event applied, "S/ms-seq".
    event: str
    contact: str
    shard: int
    #: The outbound stream of the first connector of the route, in its lane, in the contact's
    #: shard: ``keys.outbound_stream(shard, gateway, lane)`` (every key is in the shard's slot).
    outbound_stream: str
    #: The new packed state, or "" to leave it as it is.
    state: str = ""
    ttl_s: int = 1
    log_size: int = 100
    log_ttl_s: int = 86400
    #: (message id, record json) pairs for the message log.
    records: list[tuple[str, str]] = field(default_factory=list)
    outbound: list[Outbound] = field(default_factory=list)
    timers_remove: list[str] = field(default_factory=list)
    #: (timer member, due ms) pairs.
    timers_add: list[tuple[str, int]] = field(default_factory=list)
    contact_change: ContactChange | None = None
    #: A CRM call job (json), or "".
    call: str = ""
    #: A consent change "status|source|cause", or "".
    consent: str = ""
    #: Frequency caps "limit:window ms:label;...", or "".
    caps: str = ""
    now_ms: int = 0
    #: The rest of the route: the connectors to fail over to.
    failover: list[str] = field(default_factory=list)
    #: Outcome events (json) and the outcome stream's length to keep.
    events: list[str] = field(default_factory=list)
    events_max: int = 100_000
    #: The consumer group that read the event from its shard's inbound stream ("": none): the
    #: commit acknowledges (and deletes) the entry, if the group holds it pending.
    ack_group: str = ""
    #: The inbox change: () none, ("open", reason, flow), ("text",), ("reply", operator), ("close",).
    inbox: tuple[str, ...] = ()
    #: The hand-over key (``keys.handover``) of the cancellable unit the outbound messages
    #: belong to, or "" (a reply: nothing to cancel, the sender checks nothing).
    handover: str = ""
    #: The send options of every outbound message (``SendOptions.encode()``), or "".
    options: str = ""

    def to_keys(self) -> list[str]:
        """KEYS[1..15], and KEYS[16] with a hand-over key."""
        c, s = self.contact, self.shard
        return [
            keys.session(c, s), keys.message_index(c, s), keys.message_records(c, s),
            self.outbound_stream, keys.timers(s), keys.contact(c, s), keys.calls(s),
            keys.governance(c, s), keys.consent_ledger(c, s), keys.counted_sends(c, s),
            keys.flow_events(s), keys.inbound_stream(s), keys.contact_index(s), keys.handoff(c, s),
            keys.inbox(s), *([self.handover] if self.handover else []),
        ]  # fmt: skip

    def to_argv(self) -> list[str | int]:
        """ARGV, in the order commit.lua reads it."""
        cc = self.contact_change
        contact_args: list[str | int] = (
            ["", "", "", 0] if cc is None else [cc.loaded_ua, cc.fields_json, cc.tags_json, cc.new_ua]
        )
        return [
            self.version, self.event, self.state, max(self.ttl_s, 1), self.log_size, self.contact,
            len(self.records), len(self.outbound), len(self.timers_remove), len(self.timers_add),
            *contact_args, self.call, self.log_ttl_s, self.consent, self.caps, self.now_ms,
            ",".join(self.failover), len(self.events), self.events_max, self.ack_group, self.options,
            *(x for rid, rec in self.records for x in (rid, rec)),
            *(x for o in self.outbound for x in (o.id, o.text, o.kind)),
            *self.timers_remove,
            *(x for member, due in self.timers_add for x in (member, due)),
            *self.events,
            *self.inbox,
        ]  # fmt: skip
