"""Outbind: the simulated SMSC connects to the connector's outbind port and sends outbind; the
connector binds as receiver over that connection, and receipts and texts come in on it (the
connector's own binds only transmit). A wrong outbind is refused and named; its connection is
closed without a bind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engine.core.errors import ConfigError
from gateways.registry import validate_gateway_config
from gateways.simulators.smsc import SimulatedSmsc, SmscBehaviour
from gateways.smpp import pdu
from gateways.smpp.outbind import OutbindListener
from tests.conftest import ANN, eventually
from tests.test_sender import Engine, engine
from tests.test_smpp_gateway import bound, gw_of, smpp_gw
from tests.test_smpp_options import send, status_of


@pytest.fixture
async def smsc() -> AsyncIterator[SimulatedSmsc]:
    async with SimulatedSmsc(behaviour=SmscBehaviour(dlr_delay=0.01)) as s:
        yield s


async def outbind_engine(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc, **extra: Any
) -> AsyncIterator[Engine]:
    gw = smpp_gw(smsc, bind="transmitter", outbind_listen="127.0.0.1:0", **extra)
    async for e in engine(redis_url, tmp_path, {"smsc": gw}):
        await bound(e.rt)
        yield e


def listener(e: Engine) -> OutbindListener:
    ob = gw_of(e).outbind
    assert ob is not None
    return ob


async def test_after_the_smscs_outbind_receipts_and_texts_come_over_its_connection(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc
) -> None:
    async for e in outbind_engine(redis_url, tmp_path, smsc):
        assert [s.mode for s in gw_of(e).sessions] == ["transmitter"]  # nothing to receive on yet
        await smsc.outbind("127.0.0.1", listener(e).port)

        async def receiver_bound(e: Engine = e) -> bool:
            return any(s.bound.is_set() for s in listener(e).sessions)

        await eventually(receiver_bound, attempts=1000)
        assert [(b.mode, b.system_id, b.status) for b in smsc.binds] == [
            ("transmitter", "parley", pdu.ESME_ROK), ("receiver", "parley", pdu.ESME_ROK),
        ]  # fmt: skip
        mid = await send(e)

        async def delivered(e: Engine = e, mid: str = mid) -> bool:
            return await status_of(e, mid) == "delivered"

        await eventually(delivered, attempts=1000)
        assert await smsc.deliver("447700900123", "12345", "STOP") == [pdu.ESME_ROK]
        async with e.api.get("/healthz") as r:
            state = (await r.json())["gateway_state"]["smsc"]
        (ob,) = state["outbind"]["binds"].values()
        assert ob["mode"] == "receiver" and ob["state"] == "bound"

        async def text_in(e: Engine = e) -> bool:
            async with e.api.get("/v1/messages", params={"contact": ANN}) as r:
                return any(m["dir"] == "in" and m["text"] == "STOP" for m in (await r.json())["messages"])

        await eventually(text_in, attempts=1000)


async def test_a_dropped_outbind_connection_is_waited_for_again_not_redialled(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc
) -> None:
    async for e in outbind_engine(redis_url, tmp_path, smsc):
        await smsc.outbind("127.0.0.1", listener(e).port)

        async def receivers() -> int:
            return sum(1 for c in smsc.binds if c.mode == "receiver")

        await eventually(receivers, attempts=1000)
        smsc.kick("parley")  # every bind closed; the transmitter reconnects, the receiver waits

        async def gone(e: Engine = e) -> bool:
            return not listener(e).sessions

        await eventually(gone, attempts=1000)
        await bound(e.rt)
        assert await receivers() == 1
        await smsc.outbind("127.0.0.1", listener(e).port)

        async def again() -> bool:
            return await receivers() == 2

        await eventually(again, attempts=1000)


@pytest.mark.parametrize(
    ("outbind_as", "extra"),
    [
        (("parley", "wrong"), {}),
        (("parley", "secret"), {"outbind_system_id": "smsc01", "outbind_password": "ob-pw"}),
    ],
)
async def test_an_outbind_without_the_expected_credentials_is_refused(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc, outbind_as: tuple[str, str], extra: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    async for e in outbind_engine(redis_url, tmp_path, smsc, **extra):
        await smsc.outbind("127.0.0.1", listener(e).port, *outbind_as)

        async def refused() -> bool:
            return "outbind as 'parley' refused: not the system_id and password expected" in caplog.text

        await eventually(refused, attempts=1000)

        async def closed(e: Engine = e) -> bool:
            return smsc.active_binds() == 1 and not listener(e).sessions

        await eventually(closed, attempts=1000)
        assert [b.mode for b in smsc.binds] == ["transmitter"]  # no bind_receiver came


async def test_the_expected_outbind_credentials_may_differ_from_the_binds(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc
) -> None:
    extra = {"outbind_system_id": "smsc01", "outbind_password": "ob-pw"}
    async for e in outbind_engine(redis_url, tmp_path, smsc, **extra):
        await smsc.outbind("127.0.0.1", listener(e).port, "smsc01", "ob-pw")

        async def receiver() -> bool:
            return any(b.mode == "receiver" and b.system_id == "parley" for b in smsc.binds)

        await eventually(receiver, attempts=1000)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"outbind_listen": "2776"}, "outbind_listen"),
        ({"outbind_listen": "0.0.0.0:99999"}, "outbind_listen"),
        ({"outbind_password": "much-too-long"}, "outbind_password"),
        ({"bind": "receiver"}, "bind"),
    ],
)
def test_outbind_settings_are_checked_at_start(extra: dict[str, Any], key: str) -> None:
    raw = {"type": "smpp", "host": "smsc.example", "system_id": "acme", "password": "pw", **extra}
    with pytest.raises(ConfigError) as info:
        validate_gateway_config("carrier", raw)
    assert info.value.key == f"gateways.carrier.{key}"
