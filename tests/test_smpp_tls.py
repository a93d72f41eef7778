"""SMPP over TLS: the connector binds to the simulated SMSC served over TLS with certificates
made in the test (openssl), sends and gets its receipt; a client certificate the SMSC asks for;
the wrong CA, a certificate for another name and a missing client certificate are refused with
errors that say so, and sends meanwhile fail as not taken (retryable)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engine.core.errors import ConfigError, GatewayUnavailable
from gateways.registry import validate_gateway_config
from gateways.simulators.smsc import SimulatedSmsc, SmscBehaviour
from gateways.smpp.gateway import SmppGateway
from tests.conftest import ANN, eventually
from tests.test_sender import Engine, engine
from tests.test_smpp_gateway import bound, msg, smpp_gw
from tests.tls_certs import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def tls_engine(
    redis_url: str, tmp_path: Path, smsc: SimulatedSmsc, *, wait_bound: bool = True, **extra: Any
) -> AsyncIterator[Engine]:
    async for e in engine(redis_url, tmp_path, {"smsc": smpp_gw(smsc, tls=True, **extra)}):
        if wait_bound:
            await bound(e.rt)
        yield e


def gw_of(e: Engine) -> SmppGateway:
    gw = e.rt.gateways["smsc"]
    assert isinstance(gw, SmppGateway)
    return gw


async def last_error(e: Engine) -> str:
    """The bind's last_error once it has one (as /healthz shows it)."""

    async def got() -> str:
        return next((s.last_error for s in gw_of(e).sessions if s.last_error), "")

    return await eventually(got, attempts=1000)


async def test_a_message_goes_over_tls_and_its_receipt_comes_back(
    redis_url: str, tmp_path: Path, pki: Pki
) -> None:
    async with SimulatedSmsc(behaviour=SmscBehaviour(dlr_delay=0.01), tls=pki.server_context()) as smsc:
        async for e in tls_engine(redis_url, tmp_path, smsc, tls_ca=str(pki.ca)):
            await e.api.post("/v1/messages", json={"to": ANN, "text": "Your code is 4242"})
            got = await smsc.next_message("447700900123")
            assert got.text == "Your code is 4242"

            async def delivered(e: Engine = e) -> bool:
                async with e.api.get("/v1/messages", params={"contact": ANN}) as r:
                    out = [m for m in (await r.json())["messages"] if m["dir"] == "out"]
                return bool(out) and out[-1]["status"] == "delivered"

            await eventually(delivered)
            async with e.api.get("/healthz") as r:
                binds = (await r.json())["gateway_state"]["smsc"]["binds"]
            assert [b["state"] for b in binds.values()] == ["bound"]


async def test_an_smsc_that_wants_a_client_certificate_gets_ours_and_refuses_us_without(
    redis_url: str, tmp_path: Path, pki: Pki
) -> None:
    ctx = pki.server_context(require_client_cert=True)
    async with SimulatedSmsc(tls=ctx) as smsc:
        async for e in tls_engine(redis_url, tmp_path, smsc, wait_bound=False, tls_ca=str(pki.ca)):
            why = await last_error(e)
            assert why.startswith("TLS: ") and "client certificate" in why, why
            assert smsc.binds == []  # it never got as far as a bind
            with pytest.raises(GatewayUnavailable) as info:
                await gw_of(e).send(msg("hello"))
            assert not info.value.ambiguous and info.value.retryable
            assert "TLS: " in str(info.value)
        extra = {"tls_ca": str(pki.ca), "tls_cert": str(pki.client_cert), "tls_key": str(pki.client_key)}
        async for e in tls_engine(redis_url, tmp_path, smsc, **extra):
            await gw_of(e).send(msg("with our certificate"))
            assert (await smsc.next_message("447700900123")).text == "with our certificate"


async def test_a_certificate_from_another_ca_is_refused_with_a_clear_error(
    redis_url: str, tmp_path: Path, pki: Pki
) -> None:
    async with SimulatedSmsc(tls=pki.server_context()) as smsc:
        async for e in tls_engine(redis_url, tmp_path, smsc, wait_bound=False, tls_ca=str(pki.other_ca)):
            why = await last_error(e)
            assert why.startswith("TLS: certificate verify failed: unable to get local issuer certificate"), (
                why
            )
            with pytest.raises(GatewayUnavailable) as info:
                await gw_of(e).send(msg("hello"))
            assert not info.value.ambiguous and "certificate verify failed" in str(info.value)
            assert smsc.received == [] and smsc.binds == []


async def test_a_certificate_for_another_name_is_a_hostname_mismatch_unless_hostname_checks_are_off(
    redis_url: str, tmp_path: Path, pki: Pki
) -> None:
    async with SimulatedSmsc(tls=pki.server_context()) as smsc:
        wrong = {"tls_ca": str(pki.ca), "tls_server_name": "smsc.carrier.example"}
        async for e in tls_engine(redis_url, tmp_path, smsc, wait_bound=False, **wrong):
            why = await last_error(e)
            assert why.startswith("TLS: hostname mismatch"), why
            assert "smsc.carrier.example" in why
        async for e in tls_engine(redis_url, tmp_path, smsc, tls_verify_hostname=False, **wrong):
            await gw_of(e).send(msg("name not checked, chain still is"))
            assert (await smsc.next_message("447700900123")).text == "name not checked, chain still is"
        # localhost is in the certificate: a name that matches binds with every check on
        async for e in tls_engine(redis_url, tmp_path, smsc, tls_ca=str(pki.ca), tls_server_name="localhost"):
            await gw_of(e).send(msg("for localhost"))
            assert (await smsc.next_message("447700900123")).text == "for localhost"


async def test_a_plain_connector_against_a_tls_smsc_does_not_bind(
    redis_url: str, tmp_path: Path, pki: Pki
) -> None:
    async with SimulatedSmsc(tls=pki.server_context()) as smsc:
        async for e in engine(redis_url, tmp_path, {"smsc": smpp_gw(smsc, response_timeout="300ms")}):
            await last_error(e)
            assert smsc.binds == []
            with pytest.raises(GatewayUnavailable) as info:
                await gw_of(e).send(msg("hello"))
            assert not info.value.ambiguous


@pytest.mark.parametrize(
    ("extra", "key", "problem"),
    [
        ({"tls": True, "tls_ca": "/nonexistent/ca.pem"}, "tls_ca", "no such file: /nonexistent/ca.pem"),
        ({"tls_ca": "ca.pem"}, "tls_ca", "is set but tls is off"),
        ({"tls": True, "tls_key": "k.pem"}, "tls_key", "given without tls_cert"),
        ({"tls": True, "tls_verify": False, "tls_ca": "ca.pem"}, "tls_ca", "tls_verify is off"),
        ({"tls": "maybe"}, "tls", ""),
    ],
)
def test_tls_settings_are_checked_at_start_naming_the_key(
    extra: dict[str, Any], key: str, problem: str
) -> None:
    raw = {"type": "smpp", "host": "smsc.example", "system_id": "acme", "password": "pw", **extra}
    with pytest.raises(ConfigError) as info:
        validate_gateway_config("carrier", raw)
    assert info.value.key == f"gateways.carrier.{key}"
    assert problem in info.value.problem


def test_a_client_key_that_is_not_the_certificates_is_refused_at_start(pki: Pki) -> None:
    raw = {"type": "smpp", "host": "smsc.example", "system_id": "acme", "password": "pw", "tls": True,
           "tls_cert": str(pki.client_cert), "tls_key": str(pki.server_key)}  # fmt: skip
    with pytest.raises(ConfigError) as info:
        validate_gateway_config("carrier", raw)
    assert info.value.key == "gateways.carrier.tls_key"
    assert "do not load" in info.value.problem
    raw["tls_cert"] = str(pki.ca)  # a CA's certificate where the client's should be: wrong key too
    with pytest.raises(ConfigError):
        validate_gateway_config("carrier", raw)
