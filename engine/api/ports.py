"""What the HTTP API is handed (engine/app/runtime.py implements it): what a turn uses, the
connectors' port (provider webhooks land here), and the few operations only the API asks for."""

from __future__ import annotations

from typing import Any, Protocol

from engine.conversation.ports import TurnServices
from engine.crm.campaigns import CampaignKeeper
from engine.flows import FlowRegistry
from gateways.base import Host


class ApiServices(TurnServices, Host, Protocol):
    """TurnServices + the connectors' host + reload, health and the stream gauges."""

    async def reload_flows(self) -> FlowRegistry:
        """Load the flows directory again (all or nothing)."""
        ...

    async def refresh_stream_metrics(self) -> None:
        """Read the backlogs into the gauges (when /metrics is scraped)."""
        ...

    @property
    def campaign_keeper(self) -> CampaignKeeper:
        """The campaigns of files and of the API, and their backfills."""
        ...

    async def health(self) -> dict[str, Any]:
        """What /healthz reports."""
        ...
