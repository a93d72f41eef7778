"""What a turn (and the worker that runs turns) is handed: the core services plus the flows,
the governance rules, the routes and the frequency caps. The app's runtime implements it."""

from __future__ import annotations

from typing import Protocol

from engine.core.ports import Routes, Services
from engine.flows import Flow, FlowRegistry
from engine.flows.campaigns import CampaignBook
from engine.governance.consent import Keywords
from engine.governance.quiet import QuietHours


class TurnServices(Services, Protocol):
    """Services + the loaded flows, the keywords, the quiet hours, the routes and the campaigns."""

    @property
    def flows(self) -> FlowRegistry: ...

    @property
    def keywords(self) -> Keywords: ...

    @property
    def quiet(self) -> QuietHours: ...

    @property
    def router(self) -> Routes: ...

    @property
    def campaigns(self) -> CampaignBook:
        """The campaigns in force (engine/flows/campaigns.py)."""
        ...

    def caps_for(self, flow: Flow | None) -> str:
        """The frequency caps a flow's business-started sends are held to."""
        ...
