"""What every connector offers the send pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class OutboundMessage:
    """One message to hand to a provider. ``id`` is our idempotency key for it."""

    id: str
    to: str
    text: str
    sender: str


@dataclass(frozen=True)
class SendResult:
    provider_id: str


class Gateway:
    """Base class. A connector is an async context manager (it owns its client sessions)."""

    #: The connector's own options, a dataclass validated by ``engine.config.build_section``.
    Config: ClassVar[type[Any]]
    #: Whether the send pipeline may hand it messages (an inbound-only connector says False).
    can_send: ClassVar[bool] = True

    def __init__(self, name: str, config: Any) -> None:
        self.name = name
        self.config = config

    @property
    def sender(self) -> str:
        return str(getattr(self.config, "sender", ""))

    @property
    def concurrency(self) -> int:
        return int(getattr(self.config, "concurrency", 16))

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def send(self, msg: OutboundMessage) -> SendResult:
        """Hand ``msg`` to the provider; raise a GatewayError subclass on failure."""
        raise NotImplementedError
