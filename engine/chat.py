"""``parley chat FLOW --contact N``: hold a conversation with a flow from the terminal.

Lines read from stdin are the customer's texts; the engine's replies are printed as ``< text``.
It runs the real path (Redis stream, worker, commit, sender) with a console gateway in place of
a carrier, so a piped transcript behaves exactly like the service. When stdin is not a terminal
the customer's lines are echoed as ``> text``, so the output reads as a transcript.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from dataclasses import replace
from typing import TextIO

from engine import contacts, intake
from engine.config import Config
from engine.errors import ConfigError, ParleyError
from engine.numbers import InvalidNumber, to_e164
from engine.runtime import Runtime
from engine.turn import TurnDone
from gateways.console import ConsoleGateway

GATEWAY = "console"
TURN_TIMEOUT_S = 10.0


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
        if rt.flows.get(flow) is None:
            raise ParleyError(
                f"no flow {flow!r} in {cfg.engine.flows_dir} (loaded: {', '.join(sorted(rt.flows.flows))})"
            )
        existing = await contacts.get(rt.store, contact)
        record = existing or contacts.Contact(contact)
        record.fields = {**record.fields, **fields}  # tags and the rest are kept
        record.language = language or record.language
        await contacts.upsert(rt.store, record, rt.clock.now_ms())

        console = rt.gateways[GATEWAY]
        assert isinstance(console, ConsoleGateway) and rt.worker is not None
        turns: asyncio.Queue[TurnDone] = asyncio.Queue()
        rt.worker.listeners.append(turns.put_nowait)

        async def answer(event_id: str) -> TurnDone:
            while True:
                done = await asyncio.wait_for(turns.get(), TURN_TIMEOUT_S)
                if done.event.entry_id == event_id:
                    break
            for _ in done.outbound_ids:
                msg = await asyncio.wait_for(console.outbox.get(), TURN_TIMEOUT_S)
                print(f"< {msg.text}", file=out, flush=True)
            return done

        (first,) = await intake.enqueue_starts(rt, flow, [contact], {}, interrupt=True)
        done = await answer(first)
        echo = not stdin.isatty()
        loop = asyncio.get_running_loop()
        while done.outcome is None and done.result != "failed":
            line = await loop.run_in_executor(None, stdin.readline)
            if not line:
                break
            text = line.rstrip("\n")
            if echo:
                print(f"> {text}", file=out, flush=True)
            accepted = await intake.accept_inbound(
                rt,
                gateway=GATEWAY,
                contact=contact,
                to="parley",
                text=text,
                provider_id=uuid.uuid4().hex,
            )
            done = await answer(accepted.event_id)
        state = await _final_state(rt, contact)
        print(f"-- {state}", file=out, flush=True)
    return 0


async def _final_state(rt: Runtime, contact: str) -> str:
    from engine.conversations import describe, load_state

    raw = await load_state(rt.store, contact)
    if raw is None:
        return "no conversation"
    view = describe(raw)
    results = " ".join(f"{k}={v['value']!r}" for k, v in view["results"].items())
    if view["status"] == "waiting":
        return f"still waiting at {view['node']}; results: {results or 'none'}"
    return f"conversation ended: {view['outcome']}; results: {results or 'none'}"
