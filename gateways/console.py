"""A connector that hands messages to the local process (``parley chat``) instead of a provider."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

from gateways.base import Gateway, OutboundMessage, SendPolicy, SendResult


@dataclass(frozen=True)
class ConsoleConfig:
    sender: str = "parley"


class ConsoleGateway(Gateway):
    """Every sent message lands in :attr:`outbox` (an asyncio queue) in send order."""

    Config = ConsoleConfig

    def __init__(self, name: str, config: ConsoleConfig, policy: SendPolicy | None = None) -> None:
        super().__init__(name, config, policy)
        self.outbox: asyncio.Queue[OutboundMessage] = asyncio.Queue()
        self._ids = itertools.count(1)

    async def send(self, msg: OutboundMessage, timeout: float | None = None) -> SendResult:
        await self.outbox.put(msg)
        return SendResult(f"console-{next(self._ids)}")
