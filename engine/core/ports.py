"""The ports: what a part of Parley may ask of the engine, as small Protocols.

The composition root (engine/app/runtime.py) builds the engine and hands each part an object
that implements the port it needs; no part imports the root, not even for types. A connector in
gateways/ sees the engine only through :class:`GatewayHost` (as courier's channel handlers see
storage only through its ``Backend``): it may accept an inbound text, record statuses and
receipts with its own scripts (gateways/scripts/, registered on the store by name) and its keys
(engine/core/keys.py), read the configuration, the clock and the metrics. It never imports the
conversation layer or the runtime.

    Services      config, clock, metrics, store: what nearly every part uses
    ScriptRunner  run a Lua script by name; register a part's own scripts
    Routes        which connectors send a message (gateways/routing.py implements it)
    GatewayHost   Services + accept an inbound text (what a connector is handed)
    SmppServerHost  Services + submit a message like POST /v1/messages (the SMPP server's)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from redis.asyncio.client import Pipeline

from engine.core.clock import Clock
from engine.core.config import Config
from engine.core.store import Store

if TYPE_CHECKING:
    # Types only: importing a port (every connector does) must not import the Prometheus client,
    # which `parley run` configures for worker processes after it has read the configuration.
    from engine.core.metrics import Metrics


class Services(Protocol):
    """The engine's shared services: the parsed configuration, the clock, the metrics facade and
    the Redis store (with its scripts)."""

    @property
    def config(self) -> Config: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def store(self) -> Store: ...


class ScriptRunner(Protocol):
    """Lua scripts by name (engine/core/store.py implements it)."""

    def register(self, name: str, source: str) -> None: ...

    async def run(
        self, name: str, keys: list[str], args: list[Any], client: Pipeline | None = None
    ) -> Any: ...


class Routes(Protocol):
    """Which connectors send one message, in order (empty: nothing can send it)."""

    def route(self, contact: str, *, flow: str = "", inbound: str = "", sender: str = "") -> list[str]: ...


@dataclass(frozen=True)
class Accepted:
    """What became of an inbound text handed to the engine."""

    #: "accepted" (new), "duplicate" (same id and text seen before) or "conflict" (same id, other text)
    status: str
    event_id: str


class GatewayHost(Services, Protocol):
    """What a connector (and its sender) may do with the engine, handed in by the app."""

    async def accept_inbound(
        self, *, gateway: str, contact: str, to: str, text: str, provider_id: str
    ) -> Accepted:
        """Take an inbound text durably (in Redis) before the connector acknowledges its peer;
        once per (gateway, provider id)."""
        ...


@dataclass(frozen=True)
class Submission:
    """A message an ESME bound into Parley submitted, as the engine sends it."""

    #: The recipient, E.164.
    to: str
    text: str
    #: What its receipt needs, carried on the message's record and status events.
    smpp: dict[str, Any]
    #: Expires unsent this long after it is accepted (the submit's validity_period), or None.
    validity_s: float | None = None
    #: The id to give it (from :meth:`SmppServerHost.new_message_id`), or None for a new one.
    message_id: str | None = None
    #: When to send it (the submit's schedule_delivery_time), or None: now.
    send_at: datetime | None = None
    #: The submit's priority_flag (0..3), or None: the connector's default.
    priority: int | None = None
    #: Delivery receipts wanted from the carrier (engine/core/sendopts.py RECEIPT_LEVELS: the
    #: ESME asked for one), or None: the connector's default.
    receipts: str | None = None
    #: The source address to send from (the ESME's, when its account keeps it), or None: the
    #: connector's ``sender``.
    sender: str | None = None


class SmppServerHost(Services, Protocol):
    """What the SMPP server (ESMEs binding into Parley) may ask of the engine, handed in by the app."""

    def new_message_id(self, to: str) -> str:
        """A message id for recipient ``to`` (E.164), to give a message accepted later."""
        ...

    async def submit(self, message: Submission) -> str:
        """Accept ``message`` as POST /v1/messages does (the same gate, routing and connectors):
        durably in Redis when this returns its id."""
        ...
