"""Flow versions in Redis: every loaded flow's source is kept by digest, so a conversation
finishes on the version it started with, even after a reload or on another process."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from engine.core import keys
from engine.core.errors import FlowErrors
from engine.core.store import Store
from engine.flows.loader import parse_flow
from engine.flows.registry import FlowRegistry

log = logging.getLogger(__name__)

#: A version's source outlives the longest conversation that can be on it by this much.
KEEP_GRACE_S = 2 * 86400


async def publish(store: Store, registry: FlowRegistry) -> None:
    """Store the source of every current flow (one round trip), refreshing its lifetime."""
    async with store.redis.pipeline(transaction=False) as pipe:
        for flow in registry.flows.values():
            pipe.set(
                keys.flow_source(flow.name, flow.digest), flow.text, ex=int(flow.expire_after) + KEEP_GRACE_S
            )
        await pipe.execute()


async def ensure(store: Store, registry: FlowRegistry, state: dict[str, Any]) -> None:
    """Make the version a session is pinned to available in this process (rarely needed: only
    the first turn after a reload or restart of a conversation started on an older version)."""
    if not state or state.get("n") is None or registry.knows(state):
        return
    name, digest = state["f"], state["fh"]
    text = await store.redis.get(keys.flow_source(name, digest))
    if text is None:
        log.warning("flow %s version %s is gone; its conversations end as flow_changed", name, digest)
        return
    try:
        source = text.decode() if isinstance(text, bytes) else text
        # Off the event loop, as every flow load: turns of other contacts go on meanwhile.
        flow = await asyncio.to_thread(parse_flow, source, f"{name}@{digest}", None, registry.limits)
    except FlowErrors as exc:  # cannot happen for a source that loaded once, unless code changed
        log.error("flow %s version %s no longer compiles: %s", name, digest, exc)
        return
    registry.remember(flow)
