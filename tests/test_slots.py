"""The contract that keeps the engine cluster-safe: every engine Lua script, called through its
typed wrapper as the engine calls it, names keys of ONE Redis Cluster slot (a script touching two
slots is refused by a cluster with CROSSSLOT). Checked with redis-py's own CRC16 for many
numbers, shard counts and gateways; no Redis needed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from engine.conversation.intake import intake_call
from engine.core import keys
from engine.core.config import EngineConfig
from engine.core.scripts.campaigns import CampaignTimersArgs
from engine.core.scripts.cancel import CancelArgs
from engine.core.scripts.commit import CommitArgs, ContactChange, Outbound
from engine.core.scripts.contact import ContactArgs
from engine.core.scripts.erase import EraseArgs
from engine.core.scripts.fx_page import FxPageArgs
from engine.core.scripts.inbox_claim import InboxClaimArgs
from engine.core.scripts.lease import LeaseArgs
from engine.core.scripts.reindex import ReindexArgs
from engine.core.scripts.send import SendArgs
from engine.core.scripts.timers import TimersArgs
from engine.core.scripts.webhook_replay import WebhookReplayArgs
from engine.core.store import SCRIPTS

NOW = 1_767_225_600_000
NUMBERS = ["+447700900123", "+14155550100", "+33612345678", "+447700900999", "+61412345678"]
SHARD_COUNTS = (1, 3, 8, 64, 1024)
GATEWAYS = ("carrier", "smsc", "-")


def _calls() -> Iterator[tuple[str, str, list[str]]]:
    """(script, label, keys) for representative calls of every engine script."""
    for shards in SHARD_COUNTS:
        for n in NUMBERS:
            s = keys.shard_of(n, shards)
            for gw in GATEWAYS:
                for lane in keys.LANES:
                    commit = CommitArgs(
                        version=3, event=f"{s}/{NOW}-0", contact=n, shard=s,
                        outbound_stream=keys.outbound_stream(s, gw, lane), state="{}",
                        records=[("m", "{}")], outbound=[Outbound("m", "hi", "r")],
                        timers_remove=[keys.timer_member(n, "w", "a")],
                        timers_add=[(keys.timer_member(n, "x", "b"), NOW)],
                        contact_change=ContactChange(0, "{}", "[]", NOW), call="{}",
                        consent="opted_out|sms|STOP", caps="1:1000:day", now_ms=NOW,
                        events=['{"t":"started"}'], inbox=("open", "needs_person", "support"),
                    )  # fmt: skip
                    yield "commit", f"{n} shards={shards} {gw}:{lane}", commit.to_keys()
                cfg = EngineConfig(shards=shards)
                call = intake_call(
                    cfg, NOW, gateway=gw, contact=n, to="+4470000", text="hi", provider_id="P1"
                )
                yield "intake", f"{n} shards={shards} {gw}", call.to_keys()
            yield "contact", f"{n} shards={shards}", ContactArgs(n, s, NOW, "{}", "[]").to_keys()
            yield "reindex", f"{n} shards={shards}", ReindexArgs(n, s).to_keys()
            claim = InboxClaimArgs(n, s, "alice", NOW, '{"t":"inbox"}')
            yield "inbox_claim", f"{n} shards={shards}", claim.to_keys()
            erase = EraseArgs(n, keys.erased_consent_ledger("ab12", s), s, NOW, "api", (f"{n}|w|a",))
            yield "erase", f"{n} shards={shards}", erase.to_keys()
            mid = f"msg-{s}-{NOW}-abcd"
            for ik in ("", f"{n}:order-1"):
                send = SendArgs(s, mid, "{}", 60, ("k", "send"), idempotency_key=ik)
                yield "send", f"{n} shards={shards} {ik}", send.to_keys()
            for unit, c in ((mid, n), (keys.start_unit("st-1-ab", n), "")):
                cancel = CancelArgs(s, unit, NOW, 60, 100, contact=c, message_id=mid if c else "")
                yield "cancel", f"{n} shards={shards} {unit}", cancel.to_keys()
            in_lane = CancelArgs(s, keys.start_unit("st-1-ab", n), NOW, 60, 100, contact=n, message_id="m",
                                 stream=keys.outbound_stream(s, "carrier", "bulk"), entry_id="1-0")  # fmt: skip
            yield "cancel", f"{n} shards={shards} in a lane", in_lane.to_keys()
            handed = CommitArgs(
                version=1, event=f"{s}/{NOW}-0", contact=n, shard=s, outbound_stream=keys.outbound_stream(s, "a"),
                handover=keys.handover(s, keys.start_unit("st-1-ab", n)),
            )  # fmt: skip
            yield "commit", f"{n} shards={shards} with a hand-over", handed.to_keys()
        for s in range(shards):
            yield "timers", f"shard {s}", TimersArgs(s, NOW).to_keys()
            yield "fx_page", f"shard {s}", FxPageArgs(s, "-", 100, '"f":"nps"').to_keys()
            slots = tuple(
                (keys.timer_member(n, "k", "c:e"), NOW, None)
                for n in NUMBERS
                if keys.shard_of(n, shards) == s
            )
            yield "campaigns", f"shard {s}", CampaignTimersArgs(s, slots).to_keys()
    for role in ("worker", "sender:carrier", "sender:smsc", "webhooks"):
        for mode in ("tick", "release", "leave"):
            yield "lease", f"{role} {mode}", LeaseArgs("w1", 5000, 8, mode, (1, 2), role).to_keys()  # type: ignore[arg-type]
    for index in range(12):
        yield "webhook_replay", f"webhook {index}", WebhookReplayArgs(index, ("1-0",)).to_keys()


CALLS = list(_calls())


def test_every_engine_script_has_representative_calls_here() -> None:
    assert {name for name, _, _ in CALLS} == set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_call_of_the_script_names_keys_of_one_cluster_slot(name: str) -> None:
    crossing = [
        (label, sorted({(key_slot(k.encode()), k) for k in ks}))
        for script, label, ks in CALLS
        if script == name and len({key_slot(k.encode()) for k in ks}) != 1
    ]
    assert not crossing, crossing[:3]


def test_a_contacts_keys_are_in_its_shards_slot() -> None:
    for shards in SHARD_COUNTS:
        for n in NUMBERS:
            s = keys.shard_of(n, shards)
            slot = keys.slot_of_shard(s)
            for k in (keys.contact(n, s), keys.session(n, s), keys.calls(s), keys.flow_events(s),
                      keys.inbound_stream(s), keys.outbound_stream(s, "carrier", "bulk"),
                      keys.handoff(n, s), keys.inbox(s)):  # fmt: skip
                assert key_slot(k.encode()) == slot, k
