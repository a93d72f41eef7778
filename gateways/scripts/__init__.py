"""The Lua scripts the connectors own: the shared send rate (rate.lua), message statuses and
receipts (status.lua in the contact's shard slot; provider_id.lua and receipt.lua in the
connector's ``{GW:K}`` slot), failover moves (move.lua), the check before a cancellable send
(claim.lua, in the message's shard slot), SMPP's segment maps (smpp_receipt.lua,
smpp_parts.lua), SMPP bind leases (binds.lua), and the SMPP server's account bind leases and
queues (smpps_binds.lua, smpps_push.lua). Every script touches ONE Redis Cluster slot, except
sent.lua (``SINGLE_NODE``: status.lua and provider_id.lua in one call, on a single Redis only).
Each is commented with its KEYS and ARGV and called through the typed wrapper of the same name
beside it (``status.py``'s
``StatusArgs``...); the keys are built in engine/core/keys.py like every other key.

The engine's store runs them by name once :func:`install` registered them on it (the app does
so at start; a :class:`~gateways.rate.Pacer` used alone installs its own).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from engine.core.ports import ScriptRunner

SCRIPTS = (
    "status", "provider_id", "receipt", "move", "rate", "smpp_receipt", "smpp_parts", "binds", "claim",
    "smpps_binds", "smpps_push",
)  # fmt: skip

#: Scripts over several slots, for a single Redis (or a Sentinel-watched primary) only, each the
#: named scripts as functions in front of its own body: sent.lua records a send in one call
#: (provider_id.lua, status.lua); a Redis Cluster makes the calls one by one instead.
SINGLE_NODE = {"sent": ("provider_id", "status")}


def as_text(raw: Any) -> str:
    """A script's reply item as text (bytes from a plain client, str from a decoding one)."""
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _source(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.lua").read_text()


def composed(name: str) -> str:
    """The source of single-node script ``name``: its parts as ``local function part(KEYS,
    ARGV)``, each its own file's body, then its own body."""
    parts = [f"local function {p}(KEYS, ARGV)\n{_source(p)}\nend\n" for p in SINGLE_NODE[name]]
    return "".join(parts) + _source(name)


def install(store: ScriptRunner, names: tuple[str, ...] = SCRIPTS) -> None:
    """Register ``names`` on ``store`` (idempotent: a registered name is left alone); with all
    of them, the single-node scripts too (run only where the store is not a cluster)."""
    for name in names:
        store.register(name, _source(name))
    if names == SCRIPTS:
        for name in SINGLE_NODE:
            store.register(name, composed(name))
