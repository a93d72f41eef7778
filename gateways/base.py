"""What every connector offers the send pipeline and the webhook routes.

A connector (one module, registered by one line in ``gateways/registry.py``) says how to hand
one message to its provider (:meth:`Gateway.send`) and, for providers that call back, how to
authenticate and read their webhooks (:meth:`Gateway.authenticate`, :meth:`Gateway.parse_inbound`,
:meth:`Gateway.parse_receipts`). Everything else (lanes, rate, retries, circuit breaker,
failover, status records) is the pipeline's, the same for every connector.
"""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import orjson

from engine.core import idmaps
from engine.core.config import Duration
from engine.core.errors import BadRequest
from engine.core.ports import GatewayHost
from engine.core.sendopts import NONE, SendOptions
from engine.core.sms import encoding_of

#: Our message statuses a receipt may report, in the order a message moves through them.
#: A final status (rank 2) is never replaced by an earlier one arriving late.
STATUS_RANK = {
    "queued": 0, "sent": 1, "delivered": 2, "failed": 2, "expired": 2, "rejected": 2, "blocked": 2,
}  # fmt: skip


@dataclass(frozen=True)
class SendPolicy:
    """The send pipeline's settings for one connector (keys beside ``type`` in its section)."""

    #: Message segments per second towards this provider (a 3-part message costs 3); 0 = no limit.
    #: Shared by every process sending through this connector (the bucket lives in Redis).
    rate: float = 0.0
    #: Sends in flight to this provider at once.
    concurrency: int = 16
    #: A message not sent this long after it was queued expires (status ``expired``).
    max_age: Duration = Duration(3600.0)
    #: Attempts per message on this connector for retryable failures before it fails.
    max_attempts: int = 6
    #: First retry back-off; doubles per attempt (with jitter) up to ``backoff_max``.
    backoff: Duration = Duration(1.0)
    backoff_max: Duration = Duration(60.0)
    #: Consecutive retryable failures that open the circuit (stop sending, probe later).
    circuit_failures: int = 5
    #: How long an open circuit waits before one probe message; doubles while probes fail.
    #: Short, so a provider that recovers sees traffic again within seconds: a probe is one
    #: message, so even a provider down for an hour gets one request every few seconds.
    circuit_cooldown: Duration = Duration(1.0)
    circuit_cooldown_max: Duration = Duration(5.0)
    #: The longest a probe waits for the provider's answer (the connector's ``timeout`` is for
    #: every other send): a probe that lands in a hanging provider costs seconds.
    probe_timeout: Duration = Duration(2.0)
    #: Bulk messages read ahead into memory (waiting for their turn at the rate).
    bulk_prefetch: int = 64
    #: How long a sent message's provider id is kept for its delivery receipt. Most receipts come
    #: within minutes; a carrier retries an unreachable handset for up to 72 h (the usual SMSC
    #: validity period) before the final receipt. A later receipt finds nothing and is dropped.
    receipt_window: Duration = Duration(72 * 3600.0)


POLICY_KEYS = frozenset(SendPolicy.__dataclass_fields__)


@dataclass(frozen=True)
class OutboundMessage:
    """One message to hand to a provider. ``id`` is our idempotency key for it."""

    id: str
    to: str
    text: str
    sender: str
    #: Segments it costs on the wire (GSM-7 / UCS-2 with concatenation).
    segments: int = 1
    #: For a connector that puts the parts on the wire one by one (``paces_parts``): awaited
    #: before each part after the first, it returns when that part's rate slot is due.
    pace: Callable[[], Awaitable[None]] | None = field(default=None, compare=False, repr=False)
    #: Its validity, due time, priority and receipt level (engine/core/sendopts.py); a
    #: connector that has no such things ignores them.
    options: SendOptions = NONE


@dataclass(frozen=True)
class SendResult:
    provider_id: str


@dataclass(frozen=True)
class InboundText:
    """A customer's text as a provider reported it (the number as given; the route normalises)."""

    sender: str
    to: str
    text: str
    provider_id: str


@dataclass(frozen=True)
class Receipt:
    """A delivery report: the provider's id for our message, and what became of it.

    ``status`` is ours (``sent``, ``delivered``, ``failed``, ``expired``, ``rejected``); ``error``
    keeps the provider's own status and code for the record (``undelivered 30003``)."""

    provider_id: str
    status: str
    error: str = ""


@dataclass(frozen=True)
class Webhook:
    """An HTTP request from a provider, as a connector sees it (no web framework types)."""

    method: str
    #: The URL as the provider called it (``public_url`` + path when Parley sits behind a proxy).
    url: str
    headers: Mapping[str, str]
    body: bytes
    query: Mapping[str, str] = field(default_factory=dict)

    def form(self) -> dict[str, str]:
        """An ``application/x-www-form-urlencoded`` body (the query string for a GET)."""
        if self.method == "GET":
            return dict(self.query)
        try:
            pairs = urllib.parse.parse_qsl(self.body.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise BadRequest("form body is not UTF-8") from None
        return dict(pairs)

    def json(self) -> Any:
        if not self.body:
            raise BadRequest("body is empty; send a JSON object")
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None


@dataclass(frozen=True)
class WebhookAnswer:
    """What a webhook route answers a provider that was accepted (some providers want a body)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"


class Gateway:
    """Base class. A connector is an async context manager (it owns its client sessions)."""

    #: The connector's own options, a dataclass validated by ``engine.core.config.build_section``.
    Config: ClassVar[type[Any]]
    #: Whether the send pipeline may hand it messages (an inbound-only connector says False).
    can_send: ClassVar[bool] = True
    #: Whether :meth:`find_sent` can ask the provider if it already took a message. Only for
    #: providers that take no idempotency key: the pipeline asks before sending again a message
    #: that may have been taken (read back after a crash, or after an ambiguous failure).
    can_reconcile: ClassVar[bool] = False
    #: It sends a long text as separate parts, one after another (SMPP's submit_sm per part):
    #: the rate books a slot per part (``OutboundMessage.pace``), not one for the whole text.
    paces_parts: ClassVar[bool] = False

    def __init__(self, name: str, config: Any, policy: SendPolicy | None = None) -> None:
        self.name = name
        self.config = config
        self.policy = policy or SendPolicy()

    @classmethod
    def check(cls, name: str, config: Any) -> None:
        """Cross-field checks of the connector's options; raise ConfigError naming the key."""

    @classmethod
    def send_timeout(cls, config: Any) -> float:
        """The longest one request of a send waits for the provider's answer with these options
        (0: the connector waits for nobody). The send latency buckets reach beyond it."""
        return 0.0

    @functools.cached_property
    def receipt_buckets(self) -> idmaps.Buckets:
        """How the connector's provider-id map is cut (engine/core/idmaps.py): its receipt window,
        sized for its rate."""
        return idmaps.plan(self.policy.receipt_window, self.policy.rate)

    @property
    def sender(self) -> str:
        return str(getattr(self.config, "sender", ""))

    @property
    def concurrency(self) -> int:
        return self.policy.concurrency

    def segments(self, text: str) -> int:
        """What ``text`` costs at the rate: the SMS parts it takes on the air (at least 1)."""
        return max(1, encoding_of(text).segments)

    def attach(self, rt: Host, *, active: bool) -> None:
        """Called by the runtime before the connector is opened. ``active``: this process runs
        the senders (a connector with its own sessions, like SMPP, opens them only then)."""

    def health(self) -> dict[str, Any] | None:
        """What /healthz shows of the connector beyond its type (None: nothing)."""
        return None

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def sendable(self) -> bool:
        """Whether this process can send through the connector now (an SMPP connector: it holds
        at least one bind lease). A process that cannot joins none of the connector's sender
        leases, so the processes that can read its lanes."""
        return True

    async def wait_sendable(self, timeout: float) -> bool:
        """Whether this process can send through the connector now (waiting up to ``timeout``
        seconds for it). The sender reads no messages while it cannot: an SMPP connector whose
        binds are all held by other processes leaves its messages to them."""
        return True

    async def send(self, msg: OutboundMessage, timeout: float | None = None) -> SendResult:
        """Hand ``msg`` to the provider; raise a GatewayError subclass on failure (GatewayThrottled
        for a rate signal). ``timeout``: the longest to wait for the provider's answer to this
        attempt (a circuit probe's); None: the connector's own."""
        raise NotImplementedError

    async def find_sent(self, msg: OutboundMessage, since_ms: int, timeout: float | None = None) -> list[str]:
        """The provider's ids of messages it took that are ``msg`` (same recipient, sender and
        text, created at or after ``since_ms``, Unix ms), oldest first; [] when none.
        Raise a GatewayError when the provider cannot be asked."""
        raise NotImplementedError

    # Webhooks -------------------------------------------------------------------------------

    @property
    def webhook_auth(self) -> bool:
        """True when the connector authenticates its own webhooks (signature, basic auth);
        otherwise the webhook routes ask for an API bearer key like every /v1 route."""
        return False

    def authenticate(self, hook: Webhook, now: float) -> None:
        """Raise :class:`engine.core.errors.WebhookRejected` unless ``hook`` comes from the provider.
        ``now`` is Unix seconds, for timestamp windows (replay protection)."""

    def parse_inbound(self, hook: Webhook) -> list[InboundText]:
        """The texts in an inbound webhook; raise BadRequest / Unprocessable naming the field."""
        raise BadRequest(f"gateway {self.name} does not take inbound texts")

    def parse_receipts(self, hook: Webhook) -> list[Receipt]:
        """The delivery reports in a receipt webhook (an unknown provider status maps to none)."""
        raise BadRequest(f"gateway {self.name} does not take delivery receipts")

    def inbound_answer(self) -> WebhookAnswer | None:
        """The body a provider wants back for an accepted inbound text (None: Parley's JSON)."""
        return None

    def receipt_answer(self) -> WebhookAnswer | None:
        return None


class Host(GatewayHost, Protocol):
    """The port a connector is handed (:meth:`Gateway.attach`), with its sender: the core's
    :class:`~engine.core.ports.GatewayHost` plus the configured connectors by name (a receipt
    finds the id map of the connector that sent it)."""

    @property
    def gateways(self) -> Mapping[str, Gateway]: ...
