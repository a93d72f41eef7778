"""Decisions per second of the flow engine alone: no Redis, no I/O, one core.

A decision is what one turn asks of a flow: ``start`` (greeting) or ``resume`` (a reply). The
benchmark replays realistic NPS conversations (score, reason) with varied replies, so reply
parsing, routing and template rendering are all in the loop.

    python loadtests/bench_rules.py [--flow nps] [--seconds 5]
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from pathlib import Path

from engine.flows import FlowRegistry, resume, start

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {
    "nps": [
        ["9", "Fast delivery"],
        ["meh", "4", "Late again"],
        ["seven", "Cheaper shipping"],
        ["10/10!", "All good"],
    ],
    "csat": [["5"], ["2", "Answer faster"], ["x", "3", "Rude"]],
    "appointment": [["1"], ["2", "2"], ["3", "yes"]],
}
CONTACTS = [
    {
        "first_name": "Ann",
        "company": "Acme",
        "appointment_at": "2026-11-25T10:30",
        "number": "+447700900123",
        "tags": [],
    },
    {"number": "+447700900456", "appointment_at": "2026-11-26T09:00", "tags": []},
    {
        "first_name": "raj kumar",
        "appointment_at": "2026-11-25T10:30",
        "alt_slots": ["2026-11-26T09:00", "2026-11-27T14:00"],
        "number": "+447700900789",
        "tags": [],
    },
]


def run(flow_name: str, seconds: float) -> tuple[int, float]:
    flow = FlowRegistry.from_dir(ROOT / "rules").flows[flow_name]
    scripts = itertools.cycle(SCRIPTS.get(flow_name, [["1", "yes", "ok"]]))
    contacts = itertools.cycle(CONTACTS)
    decisions, now = 0, 1_767_225_600_000
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        for _ in range(200):
            contact = next(contacts)
            d = start(flow, dict(contact), {}, now)
            decisions += 1
            for text in next(scripts):
                if not d.active:
                    break
                d = resume(flow, d.state, contact, text, now)
                decisions += 1
    return decisions, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flow", default="nps", choices=sorted(SCRIPTS))
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    run(args.flow, 0.5)  # warm-up
    n, elapsed = run(args.flow, args.seconds)
    print(f"flow {args.flow}: {n:,} decisions in {elapsed:.2f}s = {n / elapsed:,.0f} decisions/s on one core")
    where = platform.processor() or platform.platform()
    print(f"  python {platform.python_version()}, {platform.machine()}, {where}")


if __name__ == "__main__":
    main()
