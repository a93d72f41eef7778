"""What the console is handed (engine/app/runtime.py implements it): what the API's handlers
use, plus the parts of the running process its pages show (roles, senders, their leases)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from engine.api.ports import ApiServices


class ConsoleServices(ApiServices, Protocol):
    """ApiServices + what this process runs (for the Overview and Gateways pages)."""

    @property
    def roles(self) -> list[str]:
        """What this process runs: api, worker, sender."""
        ...

    @property
    def senders(self) -> Mapping[str, Any]:
        """This process's send pipeline, per connector (gateways/sender.py ``Sender``)."""
        ...
