"""``parley chat FLOW --contact N``: hold a conversation with a flow from the terminal.

Lines read from stdin are the customer's texts; the engine's replies are printed as ``< text``.
It runs the real path (Redis stream, worker, commit, sender, caller) with a console gateway in
place of a carrier, so a piped transcript behaves exactly like the service. When stdin is not a
terminal the customer's lines are echoed as ``> text``, so the output reads as a transcript.

What a turn did besides speaking is shown as ``~`` lines: contact fields it set and tags it
added (``~ set tier = 'gold'``, ``~ tag vip``) and the CRM calls it made (``~ CRM GET url: ok``).
``/timer`` (or ``/fire``) makes the contact's next pending timer due now (a wait's timeout, the
conversation's expiry), so a 4-hour reminder can be tried at once; the worker fires it as it
would have. A start that does not begin a conversation says why (``-- no conversation: ...``)
and exits nonzero: 2 when the command line can fix it (a required ``--field``), else 1.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TextIO

from engine.app.runtime import Runtime
from engine.conversation import intake
from engine.conversation.turn import TurnDone, missing_fields
from engine.core import contacts, keys
from engine.core.config import Config
from engine.core.errors import ConfigError, ParleyError
from engine.core.numbers import InvalidNumber, to_e164
from engine.flows import Flow
from gateways.console import ConsoleGateway

GATEWAY = "console"
TURN_TIMEOUT_S = 10.0
#: Lines that are commands to the chat rather than texts from the customer.
TIMER_COMMANDS = ("/timer", "/fire")
TIMER_KINDS = {
    "w": "the wait timeout",
    "x": "the conversation's expiry",
    "c": "the CRM call's safety timer",
    "d": "the deferred start",
}


async def run_chat(
    cfg: Config, flow: str, number: str, fields: dict[str, str], language: str | None,
    stdin: TextIO | None = None, stdout: TextIO | None = None,
) -> int:  # fmt: skip
    logging.getLogger().setLevel(max(logging.WARNING, logging.getLogger().level))
    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    try:
        contact = to_e164(number, cfg.numbers.default_region)
    except InvalidNumber as exc:
        raise ConfigError("--contact", f"{number!r} is not a phone number: {exc}") from None
    cfg = replace(
        cfg,
        gateways={GATEWAY: {"type": "console", "sender": "parley"}},
        engine=replace(cfg.engine, default_gateway=GATEWAY),
        # Trying a flow out: no sending windows or caps in the way (consent still applies).
        governance=replace(cfg.governance, send_window="", send_windows={}, caps=[]),
    )
    async with Runtime(cfg, http=False, ephemeral_redis=not cfg.redis.url) as rt:
        chosen = rt.flows.get(flow)
        if chosen is None:
            raise ParleyError(
                f"no flow {flow!r} in {cfg.engine.flows_dir} (loaded: {', '.join(sorted(rt.flows.flows))})"
            )
        existing = await contacts.get(rt.store, rt.config.engine.shards, contact)
        record = existing or contacts.Contact(contact)
        record.fields = {**record.fields, **fields}  # tags and the rest are kept
        record.language = language or record.language
        await contacts.upsert(rt.store, rt.config.engine.shards, record, rt.clock.now_ms())

        chat = _Transcript(rt, contact, out)
        (first,) = await intake.enqueue_starts(rt, flow, [contact], {}, interrupt=True)
        done = await chat.turn(_entry(first))
        refused = _refusal(chosen, record, done)
        if refused is not None:
            code, reason = refused
            print(f"-- no conversation: {reason}", file=out, flush=True)
            return code
        echo = not stdin.isatty()
        loop = asyncio.get_running_loop()
        while done.outcome is None and done.result != "failed":
            line = await loop.run_in_executor(None, stdin.readline)
            if not line:
                break
            text = line.rstrip("\n")
            if echo:
                print(f"> {text}", file=out, flush=True)
            if text.strip().lower() in TIMER_COMMANDS:
                fired = await chat.fire_next_timer()
                done = fired or done
                continue
            accepted = await intake.accept_inbound(
                rt,
                gateway=GATEWAY,
                contact=contact,
                to="parley",
                text=text,
                provider_id=uuid.uuid4().hex,
            )
            done = await chat.turn(_entry(accepted.event_id))
        print(f"-- {await _final_state(rt, contact)}", file=out, flush=True)
    return 0


def _entry(event_id: str) -> Callable[[TurnDone], bool]:
    """Matches the turn of one stream entry."""
    return lambda done: done.event.entry_id == event_id


class _Transcript:
    """Waits for the contact's turns and prints what each did: ``~`` lines (a CRM call, fields
    set, tags added), then the messages it sent, then any turn it set off (a CRM call's answer)."""

    def __init__(self, rt: Runtime, contact: str, out: TextIO) -> None:
        self.rt, self.contact, self.out = rt, contact, out
        console = rt.gateways[GATEWAY]
        assert isinstance(console, ConsoleGateway) and rt.worker is not None
        self.console = console
        self.turns: asyncio.Queue[TurnDone] = asyncio.Queue()
        rt.worker.listeners.append(self.turns.put_nowait)
        #: CRM calls answered for this contact, oldest first (method, url, ok, answer).
        self.calls: list[tuple[str, str, bool, dict[str, Any]]] = []
        if rt.caller is not None:
            rt.caller.listeners.append(self._called)

    def _called(self, contact: str, job: dict[str, Any], ok: bool, answer: dict[str, Any]) -> None:
        if contact == self.contact:
            self.calls.append((job.get("method", "GET"), job.get("url", ""), ok, answer))

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    async def turn(self, match: Callable[[TurnDone], bool], timeout: float = TURN_TIMEOUT_S) -> TurnDone:
        """The first turn ``match`` accepts, printed, and the call answers that follow it."""
        before = await contacts.get(self.rt.store, self.rt.config.engine.shards, self.contact)
        while True:
            done = await asyncio.wait_for(self.turns.get(), timeout)
            if match(done):
                break
        if done.event.kind == "call":
            method, url, ok, answer = self.calls.pop(0) if self.calls else ("", "", done.event.ok, {})
            outcome = "ok" if ok else f"failed: {answer.get('error', 'no answer')}"
            self.say(f"~ CRM {method} {url}: {outcome}".replace("  ", " "))
        self._changes(before, await contacts.get(self.rt.store, self.rt.config.engine.shards, self.contact))
        # Read before waiting for the sends: the CRM's answer may be a turn done by then.
        waiting_call = await self._waiting_call()
        for _ in done.outbound_ids:
            msg = await asyncio.wait_for(self.console.outbox.get(), TURN_TIMEOUT_S)
            self.say(f"< {msg.text}")
        if waiting_call is not None:  # the flow asked the CRM: its answer is the next turn
            return await self.turn(
                lambda d: d.event.kind in ("call", "timer") and d.event.contact == self.contact,
                timeout=waiting_call + TURN_TIMEOUT_S,
            )
        return done

    def _changes(self, before: contacts.Contact | None, after: contacts.Contact | None) -> None:
        if after is None:
            return
        old_fields = before.fields if before else {}
        for name, value in after.fields.items():
            if name not in old_fields or old_fields[name] != value:
                self.say(f"~ set {name} = {value!r}")
        old_tags = set(before.tags) if before else set()
        for tag in after.tags:
            if tag not in old_tags:
                self.say(f"~ tag {tag}")

    async def _waiting_call(self) -> float | None:
        """The call timeout, if the conversation now waits for a CRM call's answer."""
        from engine.conversation.conversations import load_state

        state = await load_state(self.rt.store, self.rt.config.engine.shards, self.contact)
        if not state or state.get("n") is None:
            return None
        flow: Flow | None = self.rt.flows.for_state(state)
        node = flow.nodes.get(state["n"]) if flow is not None else None
        return node.call.timeout if node is not None and node.call is not None else None

    async def fire_next_timer(self) -> TurnDone | None:
        """Make the contact's earliest pending timer due now and print the turn it sets off."""
        r = self.rt.store.redis
        shard = keys.shard_of(self.contact, self.rt.config.engine.shards)
        timers = keys.timers(shard)
        pending = [
            (score, member.decode() if isinstance(member, bytes) else member)
            async for member, score in r.zscan_iter(
                timers, match=keys.timer_member_prefix(self.contact) + "*"
            )
        ]
        if not pending:
            self.say("~ no timer pending")
            return None
        due, member = min(pending)
        now = self.rt.clock.now_ms()
        kind, _, token = member.removeprefix(keys.timer_member_prefix(self.contact)).partition("|")
        what = TIMER_KINDS.get(kind, f"the {kind!r} timer")
        node = token.partition("@")[0] if kind in ("w", "c") else ""
        where = f" of node {node}" if node else ""
        self.say(f"~ fired {what}{where} (due in {_duration(max(0, int(due) - now))})")
        await r.zadd(timers, {member: now}, xx=True)
        return await self.turn(lambda d: d.event.kind == "timer" and d.event.contact == self.contact)


def _duration(ms: int) -> str:
    """``3h 59m``, ``2d 23h``, ``45s``: how far off a timer was."""
    s = ms // 1000
    days, hours, minutes = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {s % 60}s" if minutes else f"{s}s"


def _refusal(flow: Flow, record: contacts.Contact, done: TurnDone) -> tuple[int, str] | None:
    """Why the start began no conversation, with the exit code, or None if it began one."""
    if done.result == "skipped_missing_fields":
        lacking = missing_fields(flow, record)
        names = ", ".join(lacking)
        field_word = "field" if len(lacking) == 1 else "fields"
        pronoun = "it" if len(lacking) == 1 else "them"
        how = " ".join(f"--field {name}=..." for name in lacking)
        return 2, (
            f"flow {flow.name!r} needs the contact {field_word} {names}, which {record.number} lacks "
            f"(give {pronoun} with {how})"
        )
    if done.result == "skipped_opted_out":
        return 1, f"{record.number} opted out (they can text START, or the CRM records consent)"
    if done.result == "skipped_no_marketing_consent":
        return 1, (
            f"flow {flow.name!r} is marketing and {record.number} has not opted in to marketing "
            "(PUT /v1/contacts/{number}/consent with purpose: marketing records it)"
        )
    if done.result == "skipped_suppressed":
        return 1, f"{record.number} is suppressed (DELETE /v1/suppressions/{record.number} lifts it)"
    if done.result == "failed" and not done.outbound_ids:
        return 1, f"flow {flow.name!r} failed at its start (the log line above says why)"
    return None


async def _final_state(rt: Runtime, contact: str) -> str:
    from engine.conversation.conversations import describe, load_state

    raw = await load_state(rt.store, rt.config.engine.shards, contact)
    if raw is None:
        return "no conversation"
    view = describe(raw)
    results = " ".join(f"{k}={v['value']!r}" for k, v in view["results"].items())
    if view["status"] == "waiting":
        return f"still waiting at {view['node']}; results: {results or 'none'}"
    error = f" ({view['error']})" if view.get("error") else ""
    return f"conversation ended: {view['outcome']}{error}; results: {results or 'none'}"
