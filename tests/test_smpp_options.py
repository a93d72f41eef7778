"""Per-message SMPP delivery options: validity_period, schedule_delivery_time and priority_flag
from the API, a flow's ``sms:`` section and the connector's defaults, in SMPP's time format
(round trips as properties); registered_delivery levels and what each kind of receipt does."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.errors import ConfigError
from engine.core.sendopts import SendOptions
from gateways.base import OutboundMessage
from gateways.registry import validate_gateway_config
from gateways.simulators.smsc import SimulatedSmsc, SmscBehaviour, Submit
from gateways.smpp import smpptime
from tests.conftest import ANN, eventually
from tests.test_sender import Engine, start
from tests.test_smpp_gateway import gateway_engine, gw_of

HANDSET = ANN.removeprefix("+")
SMS_FLOW = """
name: urgent_note
start: hello
sms: {validity: 10m, priority: 3, receipts: failure}
nodes:
  hello: {say: "{{ params.text }}", end: done}
"""


# The time format (SMPP 3.4 section 7.1.1) ---------------------------------------------------


@given(st.integers(min_value=1, max_value=smpptime.MAX_RELATIVE_S))
def test_a_relative_time_reads_back_as_the_interval_written(seconds: int) -> None:
    value = smpptime.encode_relative(seconds)
    assert len(value) == 16 and value.endswith("000R")
    assert smpptime.relative_seconds(value) == seconds


instants = st.datetimes(
    min_value=datetime(2000, 1, 2), max_value=datetime(2099, 12, 30), timezones=st.just(UTC)
).map(lambda d: d.replace(microsecond=d.microsecond // 100_000 * 100_000))


@given(instants)
def test_an_absolute_time_reads_back_as_the_instant_written_to_the_tenth(at: datetime) -> None:
    value = smpptime.encode_absolute(at)
    assert len(value) == 16 and value.endswith("00+")
    assert smpptime.decode(value) == at


@given(instants, st.integers(min_value=-48, max_value=48))
def test_an_absolute_time_in_any_zone_names_the_same_instant(at: datetime, quarters: int) -> None:
    """An SMSC may write its local time with its offset: the instant is the same."""
    local = at + timedelta(minutes=15 * quarters)
    sign = "+" if quarters >= 0 else "-"
    value = local.strftime("%y%m%d%H%M%S") + f"{local.microsecond // 100_000}{abs(quarters):02d}{sign}"
    assert smpptime.decode(value) == at


@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=1000, max_value=86400 * 99 * 1000))
def test_a_relative_validity_never_runs_past_the_instant_it_stands_for(now_ms: int, ahead_ms: int) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(milliseconds=now_ms)
    value = smpptime.encode_ms(
        int(now.timestamp() * 1000) + ahead_ms, int(now.timestamp() * 1000), "relative"
    )
    assert ahead_ms - 1000 < smpptime.relative_seconds(value) * 1000 <= ahead_ms


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("020610233429000R", ((2 * 365 + 6 * 30 + 10) * 24 + 23) * 3600 + 34 * 60 + 29),  # section 7.1.1.2
        ("000000010000000R", 3600),
    ],
)
def test_relative_times_as_the_specification_writes_them(value: str, expected: int) -> None:
    assert smpptime.relative_seconds(value) == expected


@pytest.mark.parametrize("value", ["26120110", "261301000000000+", "261201000000049+", "26120100000000+R"])
def test_what_is_not_an_smpp_time_is_refused(value: str) -> None:
    with pytest.raises(smpptime.BadTime):
        smpptime.decode(value)


# Into submit_sm --------------------------------------------------------------------------------


@pytest.fixture
async def smsc() -> AsyncIterator[SimulatedSmsc]:
    async with SimulatedSmsc(behaviour=SmscBehaviour(dlr_delay=0.01)) as s:
        yield s


async def submitted(smsc: SimulatedSmsc, n: int = 1) -> Submit:
    async def got() -> Submit | None:
        return smsc.received[n - 1] if len(smsc.received) >= n else None

    return await eventually(got, attempts=1000)


async def status_of(e: Engine, mid: str) -> str:
    async with e.api.get(f"/v1/messages/{mid}") as r:
        return str((await r.json())["status"])


async def send(e: Engine, **body: Any) -> str:
    async with e.api.post("/v1/messages", json={"to": ANN, "text": "Your code is 4242", **body}) as r:
        assert r.status == 202, await r.text()
        return str((await r.json())["id"])


async def test_the_apis_validity_and_priority_go_in_submit_sm(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc
) -> None:
    async for e in gateway_engine(redis_url, tmp_path, smsc):
        await send(e, validity="2h", priority=2)
        sub = await submitted(smsc)
        assert sub.priority_flag == 2
        assert 7190 <= smpptime.relative_seconds(sub.validity_period) <= 7200
        assert sub.schedule_delivery_time == ""  # it was due: immediate
        await send(e)  # nothing said: the connector's defaults (none: the SMSC's own)
        plain = await submitted(smsc, 2)
        assert (plain.priority_flag, plain.validity_period, plain.registered_delivery) == (0, "", 1)


async def test_the_connectors_defaults_apply_and_a_messages_own_win(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc
) -> None:
    extra = {"validity_period": "30m", "priority": 1, "time_format": "absolute"}
    async for e in gateway_engine(redis_url, tmp_path, smsc, **extra):
        await send(e)
        sub = await submitted(smsc)
        assert sub.priority_flag == 1
        until = smpptime.decode(sub.validity_period)
        assert until is not None
        assert abs((until - datetime.now(UTC)).total_seconds() - 1800) < 10
        await send(e, validity="5m", priority=0)
        own = await submitted(smsc, 2)
        assert own.priority_flag == 0
        until = smpptime.decode(own.validity_period)
        assert until is not None and abs((until - datetime.now(UTC)).total_seconds() - 300) < 10


async def test_a_flows_sms_section_gives_its_messages_validity_priority_and_receipts(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc
) -> None:
    (tmp_path / "urgent_note.yaml").write_text(SMS_FLOW)
    async for e in gateway_engine(redis_url, tmp_path, smsc):
        await start(e.api, "urgent_note", [ANN], text="Your flight leaves from gate 12")
        sub = await submitted(smsc)
        assert sub.text == "Your flight leaves from gate 12"
        assert sub.priority_flag == 3 and sub.registered_delivery == 0x02
        assert 590 <= smpptime.relative_seconds(sub.validity_period) <= 600


async def test_a_message_handed_over_before_it_is_due_is_scheduled_at_the_smsc(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc
) -> None:
    async for e in gateway_engine(redis_url, tmp_path, smsc, time_format="absolute"):
        due = int(time.time() * 1000) + 3_600_000
        opts = SendOptions(deliver_at_ms=due, expires_ms=due + 600_000)
        await gw_of(e).send(OutboundMessage("m-1", ANN, "see you at ten", "12345", options=opts))
        sub = await submitted(smsc)
        at = smpptime.decode(sub.schedule_delivery_time)
        assert at is not None and abs(at.timestamp() * 1000 - due) < 100
        until = smpptime.decode(sub.validity_period)
        assert until is not None and abs(until.timestamp() * 1000 - due - 600_000) < 100


# registered_delivery levels ---------------------------------------------------------------------


async def test_failure_only_receipts_leave_a_delivered_message_sent_and_fail_a_failed_one(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc
) -> None:
    smsc.behaviour.dlr_stat_for = {"447700900456": "UNDELIV"}
    async for e in gateway_engine(redis_url, tmp_path, smsc, registered_delivery="failure"):
        ok = await send(e)
        bad = await send(e, to="+447700900456")
        assert {(await submitted(smsc, n)).registered_delivery for n in (1, 2)} == {0x02}

        async def failed(e: Engine = e, bad: str = bad) -> bool:
            return await status_of(e, bad) == "failed"

        await eventually(failed)
        assert smsc.stats()["receipts_sent"] == 1  # only the failure was reported
        assert await status_of(e, ok) == "sent"


async def test_an_intermediate_notification_never_ends_a_message_the_final_receipt_does(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc
) -> None:
    smsc.configure(intermediate_stat="UNDELIV", dlr_delay=0.5)  # a first attempt failed; retried
    async for e in gateway_engine(redis_url, tmp_path, smsc, registered_delivery="intermediate"):
        mid = await send(e)
        assert (await submitted(smsc)).registered_delivery == 0x11

        async def noted() -> bool:
            return smsc.stats()["intermediates_sent"] == 1

        await eventually(noted)
        assert await status_of(e, mid) == "sent"  # not failed: the SMSC is still trying

        async def delivered(e: Engine = e, mid: str = mid) -> bool:
            return await status_of(e, mid) == "delivered"

        await eventually(delivered, attempts=1000)
        metrics = e.rt.metrics.render().decode()
        assert 'result="intermediate"' in metrics


async def test_a_message_may_ask_for_no_receipt_or_another_level_than_the_connectors(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc
) -> None:
    async for e in gateway_engine(redis_url, tmp_path, smsc):
        mid = await send(e, receipts="none")
        assert (await submitted(smsc)).registered_delivery == 0
        await send(e, receipts="intermediate")
        assert (await submitted(smsc, 2)).registered_delivery == 0x11
        assert await status_of(e, mid) == "sent"


@pytest.mark.parametrize(
    ("body", "field"),
    [({"priority": 4}, "priority"), ({"priority": "high"}, "priority"), ({"receipts": "all"}, "receipts")],
)
async def test_a_wrong_priority_or_receipt_level_is_refused_naming_the_field(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc, body: dict[str, Any], field: str
) -> None:
    async for e in gateway_engine(redis_url, tmp_path, smsc):
        async with e.api.post("/v1/messages", json={"to": ANN, "text": "hi", **body}) as r:
            assert r.status == 422
            got = await r.json()
            assert got["error"]["message"].startswith(f"{field}: must be"), got
        assert smsc.received == []


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"registered_delivery": "sometimes"}, "registered_delivery"),
        ({"priority": 4}, "priority"),
        ({"time_format": "local"}, "time_format"),
        ({"validity_period": "200d"}, "validity_period"),
    ],
)
def test_connector_delivery_defaults_are_checked_at_start(extra: dict[str, Any], key: str) -> None:
    raw = {"type": "smpp", "host": "smsc.example", "system_id": "acme", "password": "pw", **extra}
    with pytest.raises(ConfigError) as info:
        validate_gateway_config("carrier", raw)
    assert info.value.key == f"gateways.carrier.{key}"


@pytest.mark.parametrize(("value", "level"), [(True, 1), (False, 0), ("yes", 1), ("final", 1), ("none", 0)])
def test_registered_delivery_keeps_its_old_true_and_false(value: Any, level: int) -> None:
    from gateways.smpp.gateway import REGISTERED_DELIVERY, receipt_level

    raw = {"type": "smpp", "host": "smsc.example", "system_id": "acme", "password": "pw",
           "registered_delivery": value}  # fmt: skip
    options, _ = validate_gateway_config("carrier", raw)
    assert REGISTERED_DELIVERY[receipt_level(options.registered_delivery)] == level


@pytest.mark.parametrize(
    ("sms", "problem"),
    [
        ("{priority: 5}", "sms.priority: must be a whole number from 0 to 3, got 5"),
        ("{receipts: always}", "sms.receipts: must be one of none, final, failure, intermediate"),
        ("{validity: soon}", "sms.validity:"),
        ("{colour: red}", "sms: unknown key 'colour'"),
        ("urgent", "sms must be a mapping"),
    ],
)
def test_a_wrong_sms_section_is_a_load_error_naming_the_line(tmp_path: Path, sms: str, problem: str) -> None:
    from engine.core.errors import FlowErrors
    from engine.flows.loader import load_flow

    path = tmp_path / "urgent_note.yaml"
    path.write_text(SMS_FLOW.replace("{validity: 10m, priority: 3, receipts: failure}", sms))
    with pytest.raises(FlowErrors) as info:
        load_flow(path)
    (err,) = info.value.errors
    assert problem in str(err) and err.line == 4
