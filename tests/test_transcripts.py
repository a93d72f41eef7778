"""Conversations as data: every ``tests/transcripts/*.txt`` is played through the real engine
(Redis stream, worker, commit, sender) with a console gateway and a fake clock.

A transcript has a header, ``---``, then one step per line::

    flow: appointment                  the flow under test; started first unless "by: trigger"
    flows: transcripts/flows           where the flows are, under tests/ (default: the shipped rules/)
    by: trigger                        the conversation starts with the customer's keyword
    contact: +447700900123
    clock: 2026-11-22T09:00:00Z        the fake clock's start (UTC)
    language: en / timezone: Europe/London
    field first_name: Ann              a contact field; JSON values (lists, numbers) are parsed
    unmatched: inbox                   engine.unmatched (texts that match no conversation)
    params: {"code": "FLASH30"}        the journey start's params (JSON)
    consent: marketing opted_in        the contact's consent before the first step (as the ledger
                                       would hold it: "opted_out", "marketing opted_in", ...)
    crm GET /orders/{ref}: 200 {"status": "dispatched"}
                                       a stub CRM on loopback answers this route (real HTTP); the
                                       engine's flow_params.crm points at it
    ---
    < Hi Ann, ...                      what Parley must say next, exactly, in order
    > 2                                what the customer texts
    ~ 4h                               the clock moves on and due timers fire
    ! claim alice                      a person acts on the contact in the inbox: claim NAME,
    ! reply alice: On its way.         reply NAME: TEXT, close NAME, return NAME: FLOW
    = outcome: rebooked                checks on the state afterwards: outcome, node, result NAME,
    = field appointment_status: rebooked    field NAME, tag, consent, inbox (none, open, claimed
                                       by NAME), inbox texts, inbox reason, message (the last
                                       outbound's status, and its error in brackets)
    = turn: skipped_no_marketing_consent   what the last turn did (engine/conversation/turn.py)
    = crm: POST /receipts {"order": "A-1042"}   the CRM's last request: method, path and (a
                                       subset of) its JSON body
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from engine.app.runtime import Runtime
from engine.conversation import conversations, inbox, intake
from engine.conversation.turn import TurnDone
from engine.core import contacts, keys
from engine.core.clock import FakeClock
from engine.core.config import parse_duration
from gateways.console import ConsoleGateway
from tests.conftest import make_config, serve

HERE = Path(__file__).parent / "transcripts"
FILES = sorted(HERE.glob("*.txt"))


@dataclass
class Transcript:
    path: Path
    header: dict[str, str] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    steps: list[tuple[int, str, str]] = field(default_factory=list)  # (line, kind, text)
    #: The stub CRM's routes: (method, path) -> (status, JSON answer).
    crm: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)


def parse(path: Path) -> Transcript:
    t = Transcript(path)
    body = False
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        if line == "---":
            body = True
        elif not body:
            key, _, value = line.partition(":")
            if key.startswith("crm "):
                method, path = key[4:].split()
                status, _, answer = value.strip().partition(" ")
                t.crm[(method, path)] = (int(status), orjson.loads(answer) if answer else {})
            elif key.startswith("field "):
                name, value = key[6:].strip(), value.strip()
                try:
                    t.fields[name] = orjson.loads(value)
                except orjson.JSONDecodeError:
                    t.fields[name] = value
            else:
                t.header[key.strip()] = value.strip()
        else:
            kind, text = line[:1], line[2:] if len(line) > 1 else ""
            assert kind in "<>~=!", f"{path}:{n}: a step starts with <, >, ~, ! or =, got {line!r}"
            t.steps.append((n, kind, text))
    return t


class Player:
    def __init__(self, rt: Runtime, clock: FakeClock, t: Transcript) -> None:
        self.rt, self.clock, self.t = rt, clock, t
        self.number = t.header.get("contact", "+447700900123")
        self.done: asyncio.Queue[TurnDone] = asyncio.Queue()
        assert rt.worker is not None
        rt.worker.listeners.append(self.done.put_nowait)
        gw = rt.gateways["console"]
        assert isinstance(gw, ConsoleGateway)
        self.console = gw
        self.said: list[str] = []
        self.last = ""  # the last turn's result
        self.crm_seen: list[tuple[str, str, Any]] = []

    async def turns(self, count: int) -> None:
        """Wait for ``count`` turns (and the turn of each CRM answer they wait for), then for the
        messages they sent."""
        sent = 0
        while count:
            done = await asyncio.wait_for(self.done.get(), 5)
            sent += len(done.outbound_ids)
            self.last = done.result
            count -= 1
            if await self.calling():
                count += 1  # the CRM's answer comes back as the next turn
        for _ in range(sent):
            self.said.append((await asyncio.wait_for(self.console.outbox.get(), 5)).text)

    async def calling(self) -> bool:
        state = await conversations.load_state(self.rt.store, self.rt.config.engine.shards, self.number) or {}
        flow = self.rt.flows.for_state(state) if state.get("n") is not None else None
        node = flow.nodes.get(state["n"]) if flow is not None else None
        return node is not None and node.call is not None

    async def answer(self, request: web.Request) -> web.Response:
        """The stub CRM: the transcript's answer for the route, and a note of the request."""
        route = request.match_info.route.resource
        assert route is not None
        body = await request.json() if request.can_read_body else None
        self.crm_seen.append((request.method, request.path, body))
        status, answer = self.t.crm[(request.method, route.canonical)]
        return web.json_response(answer, status=status)

    async def play(self) -> None:
        t, rt = self.t, self.rt
        await contacts.upsert(
            rt.store,
            rt.config.engine.shards,
            contacts.Contact(
                self.number,
                dict(t.fields),
                language=t.header.get("language"),
                timezone=t.header.get("timezone"),
            ),
            self.clock.now_ms(),
        )
        if "consent" in t.header:
            await self.consent(t.header["consent"])
        if t.header.get("by") != "trigger":
            params = orjson.loads(t.header["params"]) if "params" in t.header else {}
            await intake.enqueue_starts(rt, t.header["flow"], [self.number], params)
            await self.turns(1)
        for i, (line, kind, text) in enumerate(t.steps):
            where = f"{t.path.name}:{line}"
            if kind == "<":
                assert self.said, f"{where}: expected Parley to say {text!r}, but it said nothing more"
                got = self.said.pop(0)
                assert got == text, f"{where}: Parley said\n  {got!r}\nexpected\n  {text!r}"
                continue
            if self.said:
                raise AssertionError(
                    f"{t.path.name}:{line}: Parley also said {self.said[0]!r}, not in the transcript"
                )
            if kind == ">":
                await intake.accept_inbound(
                    rt,
                    gateway="console",
                    contact=self.number,
                    to="parley",
                    text=text,
                    provider_id=f"{where}#{i}",
                )
                await self.turns(1)
            elif kind == "~":
                self.clock.advance(parse_duration(text.strip()))
                assert rt.worker is not None
                await self.turns(await rt.worker.fire_timers())
            elif kind == "!":
                await self.act(where, text)
            elif kind == "=":
                await self.check(where, text)
        assert not self.said, f"{t.path.name}: Parley also said {self.said[0]!r} at the end"

    async def act(self, where: str, text: str) -> None:
        """A person's action on the contact in the inbox, as the API takes it."""
        head, _, arg = text.partition(":")
        action, _, operator = head.strip().partition(" ")
        if action == "claim":
            status, holder = await inbox.claim(self.rt, self.number, operator)
            assert status in ("ok", "same"), f"{where}: claim by {operator}: {status} ({holder})"
            return
        assert action in inbox.ACTIONS, f"{where}: unknown action {action!r}"
        if action == "reply":
            await inbox.enqueue(self.rt, self.number, "reply", operator, text=arg.strip())
        elif action == "return":
            await inbox.enqueue(self.rt, self.number, "return", operator, flow=arg.strip())
        else:
            await inbox.enqueue(self.rt, self.number, action, operator)
        await self.turns(1)

    async def consent(self, spec: str) -> None:
        """The contact's consent as a ledger would leave it (``marketing opted_in``)."""
        *purpose, status = spec.split()
        prefix = "mk" if purpose == ["marketing"] else "cs"
        now = self.clock.now_ms()
        fields = {
            prefix: status,
            f"{prefix}src" if prefix == "mk" else "src": "web",
            f"{prefix}at" if prefix == "mk" else "at": now,
        }
        shard = keys.shard_of(self.number, self.rt.config.engine.shards)
        await self.rt.store.redis.hset(keys.governance(self.number, shard), mapping=fields)

    async def check(self, where: str, text: str) -> None:
        what, _, expected = text.partition(":")
        expected = expected.strip()
        if what == "turn":
            assert self.last == expected, f"{where}: the last turn was {self.last!r}, expected {expected!r}"
            return
        if what == "crm":
            method, path, *body = expected.split(" ", 2)
            assert self.crm_seen, f"{where}: the CRM was not called"
            got_method, got_path, got_body = self.crm_seen[-1]
            assert (got_method, got_path) == (method, path), f"{where}: the CRM got {got_method} {got_path}"
            for k, v in (orjson.loads(body[0]) if body else {}).items():
                assert (got_body or {}).get(k) == v, f"{where}: the CRM's {k} was {(got_body or {}).get(k)!r}"
            return
        state = await conversations.load_state(self.rt.store, self.rt.config.engine.shards, self.number) or {}
        contact = await contacts.get(self.rt.store, self.rt.config.engine.shards, self.number)
        assert contact is not None
        what = what.strip()
        if what == "outcome":
            got: Any = state.get("o")
        elif what == "node":
            got = state.get("n")
        elif what.startswith("result "):
            got = state.get("r", {}).get(what[7:], {}).get("v")
        elif what.startswith("field "):
            got = contact.fields.get(what[6:])
        elif what == "tag":
            assert expected in contact.tags, f"{where}: tag {expected!r} not in {contact.tags}"
            return
        elif what.startswith("inbox") or what in ("consent", "message"):
            got = await self.inbox_fact(what)
        else:
            raise AssertionError(f"{where}: unknown check {what!r}")
        shown = got if isinstance(got, str) else orjson.dumps(got).decode()
        assert shown == expected, f"{where}: {what} is {shown!r}, expected {expected!r}"

    async def inbox_fact(self, what: str) -> Any:
        rt, shards = self.rt, self.rt.config.engine.shards
        if what == "consent":
            raw = await rt.store.redis.hget(
                keys.governance(self.number, keys.shard_of(self.number, shards)), "cs"
            )
            return raw.decode() if raw else "unknown"
        if what == "message":
            msgs = await conversations.recent_messages(rt.store, shards, self.number, 50)
            last = [m for m in msgs if m["dir"] == "out"][-1]
            return last["status"] + (f" ({last['error']})" if last.get("error") else "")
        h = await inbox.load(rt.store, shards, self.number)
        if what == "inbox texts":
            return h.texts if h else None
        if what == "inbox reason":
            return h.reason if h else None
        if h is None:
            return "none"
        return h.status + (f" by {h.operator}" if h.operator else "")


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
async def test_transcript(path: Path, redis_url: str) -> None:
    t = parse(path)
    start = dt.datetime.fromisoformat(
        t.header.get("clock", "2026-11-22T09:00:00+00:00").replace("Z", "+00:00")
    )
    clock = FakeClock(int(start.timestamp() * 1000))
    flows = {"flows_dir": str(Path(__file__).parent / t.header["flows"])} if "flows" in t.header else {}
    unmatched = {"unmatched": t.header["unmatched"]} if "unmatched" in t.header else {}
    player: Player | None = None

    async def answer(request: web.Request) -> web.Response:
        assert player is not None
        return await player.answer(request)

    async with serve(*((m, p, answer) for m, p in t.crm)) as crm:
        cfg = make_config(
            redis_url,
            # timers fire only when a transcript moves the clock
            engine={"timer_poll": "1h", "flow_params": {"crm": crm}, **flows, **unmatched},
            gateways={"console": {"type": "console"}},
        )
        async with Runtime(cfg, clock=clock, http=False) as rt:
            player = Player(rt, clock, t)
            await player.play()


def test_there_are_transcripts_for_every_shipped_flow() -> None:
    flows = {p.stem for p in (Path(__file__).parent.parent / "rules").glob("*.yaml")}
    covered = {parse(p).header.get("flow") for p in FILES}
    assert flows <= covered, f"flows without a transcript: {sorted(flows - covered)}"
