"""Connectors see the engine only through the port the app hands them (engine/core/ports.py):
an SMPP connector attached to a bare host, with no runtime, conversation layer or worker behind
it, takes a multipart text from the SMSC and hands it whole to ``accept_inbound``, once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import pytest

from engine.core.clock import Clock
from engine.core.config import Config, RedisConfig
from engine.core.metrics import Metrics
from engine.core.ports import Accepted
from engine.core.store import Store
from gateways import scripts
from gateways.base import Gateway
from gateways.registry import build_gateway
from gateways.simulators.smsc import SimulatedSmsc, SmscBehaviour
from gateways.smpp import pdu
from gateways.smpp.gateway import SmppGateway
from tests.conftest import ANN, eventually
from tests.test_smpp_gateway import LONG_GSM, smpp_gw


@dataclass
class BareHost:
    """The whole of what a connector may use: config, clock, metrics, store, inbound intake."""

    store: Store
    config: Config = field(default_factory=Config)
    clock: Clock = field(default_factory=Clock)
    metrics: Metrics = field(default_factory=Metrics)
    gateways: Mapping[str, Gateway] = field(default_factory=dict)
    taken: list[tuple[str, str, str]] = field(default_factory=list)

    async def accept_inbound(
        self, *, gateway: str, contact: str, to: str, text: str, provider_id: str
    ) -> Accepted:
        self.taken.append((gateway, contact, text))
        return Accepted("accepted", f"0-{len(self.taken)}")


@pytest.fixture
async def host(redis_url: str) -> AsyncIterator[BareHost]:
    store = Store.connect(redis_url, RedisConfig())
    scripts.install(store)
    yield BareHost(store)
    await store.close()


async def test_a_connector_on_a_bare_host_hands_a_whole_text_to_accept_inbound(host: BareHost) -> None:
    async with SimulatedSmsc(behaviour=SmscBehaviour(parts_in_order=False)) as smsc:
        gw = build_gateway("smsc", smpp_gw(smsc))
        assert isinstance(gw, SmppGateway)
        host.gateways = {"smsc": gw}
        gw.attach(host, active=True)
        async with gw:

            async def bound() -> bool:
                return any(s.bound.is_set() for s in gw.sessions)

            await eventually(bound, attempts=1000)
            statuses = await smsc.deliver("447700900123", "12345", LONG_GSM, ref=9)
            assert all(s == pdu.ESME_ROK for s in statuses)
            await asyncio.sleep(0)
    assert host.taken == [("smsc", ANN, LONG_GSM)]
