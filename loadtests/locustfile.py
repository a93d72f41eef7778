"""Locust scenarios: customers holding real conversations with Parley over its HTTP webhook.

Each simulated customer owns one phone number. It texts Parley's inbound webhook (a locust
request, ``POST /v1/inbound/{gateway}``), then waits for Parley's reply to reach its handset and
reports that wait as a locust request named ``reply <flow>``: the latency a customer sees, from
the text leaving the handset to the answer arriving on it. Replies arrive at a small stub
provider inside this locust process (gevent WSGI on ``PARLEY_LOADTEST_HANDSETS``, default
127.0.0.1:18090); Parley's ``http`` gateway must point at it (``loadtests/loadtest.py`` sets
that up). Think time between messages: 1-3 s.

    NPS customer:          texts "nps", answers the score (0-10), then a reason; again.
    appointment customer:  is sent the reminder (journey start), confirms or rebooks; again.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from collections import defaultdict
from typing import Any

import gevent
from gevent.event import Event
from gevent.pywsgi import WSGIServer
from locust import HttpUser, between, events, task

API_KEY = os.environ.get("PARLEY_LOADTEST_API_KEY", "loadtest-key-0123456789abcdef")
GATEWAY = os.environ.get("PARLEY_LOADTEST_GATEWAY", "carrier")
HANDSETS = os.environ.get("PARLEY_LOADTEST_HANDSETS", "127.0.0.1:18090")
REPLY_TIMEOUT_S = 10.0
_numbers = itertools.count(1)


class Inboxes:
    """Per-number queues of replies Parley sent (filled by the stub provider)."""

    def __init__(self) -> None:
        self.messages: dict[str, list[str]] = defaultdict(list)
        self.arrived: dict[str, Event] = defaultdict(Event)
        self.ids = itertools.count(1)

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        size = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(size) or b"{}")
        to = body.get("to", "")
        self.messages[to].append(body.get("text", ""))
        self.arrived[to].set()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"id": f"lt-{next(self.ids)}"}).encode()]

    def wait(self, number: str, timeout: float) -> str | None:
        """The next reply to ``number``, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.messages[number]:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.arrived[number].clear()
            if not self.messages[number]:
                self.arrived[number].wait(left)
        return self.messages[number].pop(0)


inboxes = Inboxes()


@events.init.add_listener
def _start_handsets(environment: Any, **_: Any) -> None:
    host, port = HANDSETS.rsplit(":", 1)
    server = WSGIServer((host, int(port)), inboxes.wsgi, log=None)
    gevent.spawn(server.serve_forever)


class Customer(HttpUser):
    abstract = True
    wait_time = between(1, 3)
    flow = ""

    def on_start(self) -> None:
        self.number = f"+4477009{next(_numbers):05d}"
        self.headers = {"Authorization": f"Bearer {API_KEY}"}
        self.client.put(
            f"/v1/contacts/{self.number}", json={"fields": self.fields()}, headers=self.headers,
            name="/v1/contacts/[number]",
        )  # fmt: skip

    def fields(self) -> dict[str, Any]:
        return {"first_name": "Sam"}

    def text(self, body: str) -> str | None:
        """Text Parley and wait for its reply; the wait is reported as ``reply <flow>``."""
        sent = time.perf_counter()
        self.client.post(
            f"/v1/inbound/{GATEWAY}", json={"from": self.number, "to": "1234", "text": body,
            "id": f"{self.number}-{sent}"}, headers=self.headers, name="/v1/inbound/[gateway]",
        )  # fmt: skip
        return self.await_reply(sent)

    def await_reply(self, since: float) -> str | None:
        reply = inboxes.wait(self.number, REPLY_TIMEOUT_S)
        elapsed_ms = (time.perf_counter() - since) * 1000
        events.request.fire(
            request_type="SMS", name=f"reply {self.flow}", response_time=elapsed_ms,
            response_length=len(reply or ""), context={},
            exception=None if reply is not None else TimeoutError(f"no reply in {REPLY_TIMEOUT_S:.0f}s"),
        )  # fmt: skip
        return reply


class NpsCustomer(Customer):
    weight = 3
    flow = "nps"

    @task
    def survey(self) -> None:
        inboxes.messages[self.number].clear()  # a late reply of an earlier round is not this one's
        if self.text("nps") is None:
            return
        gevent.sleep(random.uniform(1, 3))
        if self.text(str(random.randint(0, 10))) is None:
            return
        gevent.sleep(random.uniform(1, 3))
        self.text(random.choice(["Fast delivery", "Too expensive", "Friendly staff", "ok"]))


class AppointmentCustomer(Customer):
    weight = 1
    flow = "appointment"

    def fields(self) -> dict[str, Any]:
        return {
            "first_name": "Alex",
            "appointment_at": "2026-12-01T10:30",
            "alt_slots": ["2026-12-02T09:00", "2026-12-03T14:00"],
        }

    @task
    def reminder(self) -> None:
        inboxes.messages[self.number].clear()
        sent = time.perf_counter()
        self.client.post(
            "/v1/flows/appointment/start", json={"contacts": [self.number], "interrupt": True},
            headers=self.headers, name="/v1/flows/appointment/start",
        )  # fmt: skip
        if self.await_reply(sent) is None:
            return
        gevent.sleep(random.uniform(1, 3))
        choice = random.choice(["1", "yes", "2"])
        if self.text(choice) is None or choice != "2":
            return
        gevent.sleep(random.uniform(1, 3))
        self.text("1")
