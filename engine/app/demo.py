"""``parley demo``: two real NPS conversations through the whole path, printed with latencies.

Nothing needs configuring: an embedded redis-server (throwaway data), the engine with its HTTP
API on a free loopback port, and a simulated SMSC on loopback that Parley binds to over SMPP
3.4 (one transceiver bind, the ``type: smpp`` connector). The SMSC both receives Parley's
submit_sm and texts Parley back as the customers (deliver_sm), with delivery receipts. Each
reply's latency is measured on the SMSC's side: from the customer's deliver_sm leaving it to
Parley's answer (the submit_sm) arriving on it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import statistics
import sys
import textwrap
import time
from dataclasses import replace
from typing import Any

import aiohttp

from engine.app.runtime import Runtime
from engine.core.config import Config
from gateways.simulators.smsc import SimulatedSmsc, SmscBehaviour
from gateways.smpp.gateway import SmppGateway

SHORT_CODE = "12345"

CUSTOMERS: list[dict[str, Any]] = [
    {
        "number": "+447700900123",
        "fields": {
            "first_name": "Ann",
            "last_name": "Lee",
            "company": "Acme Deliveries",
            "last_order": "A-1042",
        },
        "says": ["9", "The driver was lovely and it came a day early"],
    },
    {
        "number": "+447700900456",
        "fields": {"first_name": "raj", "company": "Acme Deliveries", "last_order": "A-1077"},
        "says": ["meh", "four", "It arrived two days late and nobody told me"],
    },
]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:6.1f} ms"


def _line(who: str, text: str, note: str = "") -> None:
    width = 64
    lines = textwrap.wrap(text, width) or [""]
    for i, chunk in enumerate(lines):
        label = f"{who:>7} " if i == 0 else " " * 8
        tail = f"  {note}" if note and i == 0 else ""
        print(f"  {label}{chunk:<{width}}{tail}".rstrip())


async def run_demo(cfg: Config) -> int:
    logging.getLogger().setLevel(max(logging.WARNING, logging.getLogger().level))
    key = "demo-" + secrets.token_hex(12)
    password = secrets.token_hex(4)
    behaviour = SmscBehaviour(credentials={"parley": password}, dlr_delay=0.02)
    async with SimulatedSmsc(behaviour=behaviour) as smsc:
        smpp = {
            "type": "smpp", "host": "127.0.0.1", "port": smsc.port, "system_id": "parley",
            "password": password, "sender": SHORT_CODE, "window": 10,
        }  # fmt: skip
        cfg = replace(
            cfg,
            http=replace(cfg.http, host="127.0.0.1", port=0),
            api=replace(cfg.api, keys=[key]),
            gateways={"smsc": smpp},
            routing=[],
            engine=replace(cfg.engine, default_gateway="smsc"),
            # Trying a flow out: no sending windows or caps in the way (consent still applies).
            governance=replace(cfg.governance, send_window="", send_windows={}, caps=[]),
        )
        async with Runtime(cfg, ephemeral_redis=True) as rt:
            gw = rt.gateways["smsc"]
            assert isinstance(gw, SmppGateway)
            await asyncio.wait_for(asyncio.gather(*(s.bound.wait() for s in gw.sessions)), 10)
            base = f"http://127.0.0.1:{rt.http_port}"
            redis_desc = (
                f"embedded redis-server on {rt.redis_url} (throwaway data)" if rt.embedded else cfg.redis.url
            )
            print("Parley demo: NPS surveys over the real path\n")
            print(f"  redis    {redis_desc}")
            print(f"  engine   HTTP API {base}, flow {rt.flows.flows['nps'].source}")
            print(
                f"  carrier  simulated SMSC smpp://127.0.0.1:{smsc.port}, bound as transceiver (SMPP 3.4)\n"
            )
            latencies: list[float] = []
            headers = {"Authorization": f"Bearer {key}"}
            async with aiohttp.ClientSession(base, headers=headers) as http:
                for cust in CUSTOMERS:
                    await _conversation(http, smsc, cust, latencies)
            print(
                f"Reply latency over {len(latencies)} turns (handset sends -> handset receives, "
                f"through deliver_sm, Redis stream, worker, commit, sender, submit_sm):\n"
                f"  min {_ms(min(latencies)).strip()}  median {_ms(statistics.median(latencies)).strip()}"
                f"  max {_ms(max(latencies)).strip()}"
            )
            print(
                "\nNext: talk to the flow yourself with\n"
                "  .venv/bin/parley chat nps --contact +447700900123 --field first_name=Ann"
            )
    return 0


async def _conversation(
    http: aiohttp.ClientSession, smsc: SimulatedSmsc, cust: dict[str, Any], latencies: list[float]
) -> None:
    number, name = cust["number"], cust["fields"]["first_name"].title()
    handset = number.removeprefix("+")
    async with http.put(f"/v1/contacts/{number}", json={"fields": cust["fields"], "language": "en"}) as r:
        r.raise_for_status()
    print(f"Conversation with {name} ({number}), fields {cust['fields']}")
    t0 = time.time()
    async with http.post("/v1/flows/nps/start", json={"contacts": [number]}) as r:
        r.raise_for_status()
    msg = await smsc.next_message(handset, timeout=10)
    _line("parley", msg.text, f"[start -> handset {_ms(msg.last_at - t0)}]")
    for text in cust["says"]:
        sent = time.time()
        await smsc.deliver(handset, SHORT_CODE, text)
        _line(name, text)
        msg = await smsc.next_message(handset, timeout=10)
        latencies.append(msg.last_at - sent)
        _line("parley", msg.text, f"[reply {_ms(msg.last_at - sent)}]")
    async with http.get(f"/v1/conversations/{number}") as r:
        conv = await r.json()
    statuses: list[str] = []
    for _ in range(100):  # the SMSC's receipts follow the last answer within a few ms
        async with http.get("/v1/messages", params={"contact": number}) as r:
            statuses = [m["status"] for m in (await r.json())["messages"] if m["dir"] == "out"]
        if "sent" not in statuses:
            break
        await asyncio.sleep(0.01)
    results = ", ".join(
        f"{k}={v['value']!r}" + (f" ({v['category']})" if v["category"] not in (None, "other") else "")
        for k, v in conv["results"].items()
    )
    print(f"  -> {conv['status']}, outcome {conv['outcome']}; results: {results}")
    print(f"     delivery receipts: {', '.join(statuses)}\n")
    sys.stdout.flush()
