"""``parley demo``: two real NPS conversations through the whole path, printed with latencies.

Nothing needs configuring: an embedded redis-server (throwaway data), the engine with its HTTP
API on a free loopback port, the generic HTTP gateway, and a simulated carrier that both
receives Parley's messages and texts Parley back as the customers. Each reply's latency is
measured on the carrier's side: from the customer's text leaving the handset (the webhook
request) to Parley's answer arriving on it (the gateway's send request).
"""

from __future__ import annotations

import logging
import secrets
import statistics
import sys
import textwrap
import time
from dataclasses import replace
from typing import Any

import aiohttp

from engine.config import Config
from engine.runtime import Runtime
from gateways.simulators.http_carrier import SimulatedCarrier

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
    async with SimulatedCarrier() as carrier:
        cfg = replace(
            cfg,
            http=replace(cfg.http, host="127.0.0.1", port=0),
            api=replace(cfg.api, keys=[key]),
            gateways={"carrier": {"type": "http", "url": carrier.url, "sender": "12345"}},
            engine=replace(cfg.engine, default_gateway="carrier"),
            # Trying a flow out: no sending windows or caps in the way (consent still applies).
            governance=replace(cfg.governance, send_window="", send_windows={}, caps=[]),
        )
        async with Runtime(cfg, ephemeral_redis=True) as rt:
            base = f"http://127.0.0.1:{rt.http_port}"
            redis_desc = (
                f"embedded redis-server on {rt.redis_url} (throwaway data)" if rt.embedded else cfg.redis.url
            )
            print("Parley demo: NPS surveys over the real path\n")
            print(f"  redis    {redis_desc}")
            print(f"  engine   HTTP API {base}, flow {rt.flows.flows['nps'].source}")
            print(f"  carrier  simulated carrier {carrier.url} (generic HTTP gateway)\n")
            latencies: list[float] = []
            headers = {"Authorization": f"Bearer {key}"}
            async with aiohttp.ClientSession(base, headers=headers) as http:
                for cust in CUSTOMERS:
                    await _conversation(http, carrier, base, key, cust, latencies)
            print(
                f"Reply latency over {len(latencies)} turns (handset sends -> handset receives, "
                f"through webhook, Redis stream, worker, commit, sender, gateway):\n"
                f"  min {_ms(min(latencies)).strip()}  median {_ms(statistics.median(latencies)).strip()}"
                f"  max {_ms(max(latencies)).strip()}"
            )
            print(
                "\nNext: talk to the flow yourself with\n"
                "  .venv/bin/parley chat nps --contact +447700900123 --field first_name=Ann"
            )
    return 0


async def _conversation(
    http: aiohttp.ClientSession, carrier: SimulatedCarrier, base: str, key: str,
    cust: dict[str, Any], latencies: list[float],
) -> None:  # fmt: skip
    number, name = cust["number"], cust["fields"]["first_name"].title()
    async with http.put(f"/v1/contacts/{number}", json={"fields": cust["fields"], "language": "en"}) as r:
        r.raise_for_status()
    print(f"Conversation with {name} ({number}), fields {cust['fields']}")
    t0 = time.perf_counter()
    async with http.post("/v1/flows/nps/start", json={"contacts": [number]}) as r:
        r.raise_for_status()
    msg = await carrier.next_message(number)
    _line("parley", msg.text, f"[start -> handset {_ms(msg.at - t0)}]")
    for text in cust["says"]:
        sent = await carrier.text_in(f"{base}/v1/inbound/carrier", key, number, text)
        _line(name, text)
        msg = await carrier.next_message(number)
        latencies.append(msg.at - sent)
        _line("parley", msg.text, f"[reply {_ms(msg.at - sent)}]")
    async with http.get(f"/v1/conversations/{number}") as r:
        conv = await r.json()
    results = ", ".join(
        f"{k}={v['value']!r}" + (f" ({v['category']})" if v["category"] not in (None, "other") else "")
        for k, v in conv["results"].items()
    )
    print(f"  -> {conv['status']}, outcome {conv['outcome']}; results: {results}\n")
    sys.stdout.flush()
