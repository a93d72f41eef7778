"""A delivery receipt touches only the message whose id it names (issue 15, item 1).

SMSCs that answer hex ids give many all-digit ones (``10``, ``100``, ``313``), which are also
decimal numbers: reading a receipt's id "in its hex and decimal forms" let the receipt for ``10``
land on the message whose id is ``a``. These tests run that race over real TCP against the
simulated SMSC, and every interleaving of responses and receipts against real Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import orjson
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.app.runtime import Runtime
from engine.core import keys
from gateways.receipts import record_sent
from gateways.simulators.smsc import SimulatedSmsc, SmscBehaviour
from gateways.smpp import pdu
from gateways.smpp.gateway import SmppGateway
from tests.conftest import eventually, make_config, shard
from tests.test_sender import Engine, start
from tests.test_smpp_gateway import bound, gateway_engine, smpp_gw

STATUS_OF = {"DELIVRD": "delivered", "UNDELIV": "failed"}


def numbers(n: int) -> list[str]:
    return [f"+4477009{i:05d}" for i in range(n)]


async def outbound(e: Engine, contact: str) -> dict[str, Any] | None:
    async with e.api.get("/v1/messages", params={"contact": contact}) as r:
        out = [m for m in (await r.json())["messages"] if m["dir"] == "out"]
    return out[-1] if out else None


async def test_an_early_receipt_for_an_all_digit_hex_id_lands_on_its_own_message(
    redis_url: str, tmp_path: Path
) -> None:
    """The issue's race: ids ``a``..``f`` then ``10``..; each receipt comes before its
    submit_sm_resp. Every message must end with its own receipt's status, none stays ``sent``."""
    contacts = numbers(24)
    stats = {c.lstrip("+"): ("UNDELIV" if i % 2 else "DELIVRD") for i, c in enumerate(contacts)}
    behaviour = SmscBehaviour(id_start=10, dlr_before_resp=True, dlr_stat_for=stats)
    async with SimulatedSmsc(behaviour=behaviour) as smsc:
        async for e in gateway_engine(redis_url, tmp_path, smsc):
            for c in contacts:  # one at a time: ids are given in this order, a, b, ... 10, 11 ...
                await start(e.api, "note", [c], text="Hello")
                await smsc.next_message(c.lstrip("+"))
            assert any(m.ids[0].isdigit() for m in smsc.messages())

            async def final(e: Engine = e) -> bool:
                out = [await outbound(e, c) for c in contacts]
                return all(m is not None and m["status"] not in ("queued", "sent") for m in out)

            with contextlib.suppress(AssertionError):  # bounded wait; what is left is shown below
                await eventually(final, attempts=400)
            out = [await outbound(e, c) for c in contacts]
            by_dest = {m.dest: m.ids[0] for m in smsc.messages()}
            got = [(by_dest[c.lstrip("+")], m and m["status"]) for c, m in zip(contacts, out, strict=True)]
            want = [(by_dest[c.lstrip("+")], STATUS_OF[stats[c.lstrip("+")]]) for c in contacts]
            assert got == want
            assert [m and m["provider_id"] for m in out] == [by_dest[c.lstrip("+")] for c in contacts]


def receipt_sm(smsc_id: str, stat: str, err: int) -> pdu.ShortMessage:
    body = f"id:{smsc_id} sub:001 dlvrd:000 submit date:2601011200 done date:2601011201 stat:{stat} err:{err:03d}"
    return pdu.ShortMessage(pdu.Address("447700900000"), pdu.Address("12345"), body.encode(), 0, 0x04)


@st.composite
def colliding_ids(draw: st.DrawFn) -> list[int]:
    """Distinct message numbers in pairs that the hex/decimal guess confuses: ``n`` whose hex
    form is all digits (16 is ``10``) and the number those digits name in decimal (10, ``a``)."""
    digits = st.integers(1, 0x999).filter(lambda n: format(n, "x").isdigit())
    bases = draw(st.lists(digits, min_size=1, max_size=4, unique=True))
    ids = [m for n in bases for m in (n, int(format(n, "x")))]
    return draw(st.permutations(list(dict.fromkeys(ids))))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=colliding_ids(), data=st.data())
def test_no_receipt_lands_on_another_message_in_any_interleaving(
    redis_server: str, ids: list[int], data: st.DataObject
) -> None:
    """Messages get hex ids, all-digit ones among them, each the decimal form of another's; each
    message's submit_sm_resp being recorded and its receipt arriving happen in a random order.
    Each message ends with its own receipt (its own status and err code), whatever the order."""
    hexes = [format(n, "x") for n in ids]
    events = [("resp", i) for i in range(len(hexes))] + [("receipt", i) for i in range(len(hexes))]
    order = data.draw(st.permutations(events))
    stat = data.draw(
        st.lists(st.sampled_from(["DELIVRD", "UNDELIV"]), min_size=len(hexes), max_size=len(hexes))
    )
    contacts = numbers(len(hexes))

    async def scenario() -> list[dict[str, Any]]:
        async with SimulatedSmsc() as smsc:
            cfg = make_config(redis_server, gateways={"smsc": smpp_gw(smsc)})
            async with Runtime(cfg, http=False, worker=False) as rt:
                await bound(rt)
                gw = rt.gateways["smsc"]
                assert isinstance(gw, SmppGateway)
                r = rt.store.redis
                for i, c in enumerate(contacts):
                    record = {"id": f"m{i}", "dir": "out", "status": "queued", "history": []}
                    await r.hset(keys.message_records(c, shard(c)), f"m{i}", orjson.dumps(record))
                for kind, i in order:
                    if kind == "resp":
                        await record_sent(rt, "smsc", f"m{i}", contacts[i], hexes[i])
                    else:
                        await gw._on_receipt(
                            receipt_sm(hexes[i], stat[i], i + 1 if stat[i] == "UNDELIV" else 0)
                        )
                got = []
                for i, c in enumerate(contacts):
                    raw = await r.hget(keys.message_records(c, shard(c)), f"m{i}")
                    assert raw is not None
                    got.append(orjson.loads(raw))
                return got

    flush = redis.Redis.from_url(redis_server)
    flush.flushdb()
    flush.close()
    got = asyncio.run(scenario())
    for i, m in enumerate(got):
        assert m["status"] == STATUS_OF[stat[i]], (hexes, order, i, m)
        if stat[i] == "UNDELIV":
            assert m["error"] == f"UNDELIV err:{i + 1:03d}", (hexes, order, i, m)
        else:
            assert "error" not in m or not m["error"], (hexes, order, i, m)
