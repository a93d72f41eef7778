"""The request models are the one source of the server's checks and of ``/v1/openapi.json``:
what a body's schema in the description accepts, its model accepts, and the other way round
(so a client validating against the description is never refused by the server for a rule it
could not see, nor the server looser than what it describes)."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from engine.api.consent import ConsentIn, SuppressionIn
from engine.api.contacts import ContactIn
from engine.api.routes import spec
from engine.api.schema import Model
from engine.api.starts import ContactEventIn
from engine.api.webhooks import ReplayIn
from engine.core.errors import Unprocessable

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(-3, 3, allow_nan=False),
    st.sampled_from([0.0, 1.0, 2.5]),
    st.text(max_size=4),
    st.sampled_from(["api", "web", "keyword", "opted_in", "opted_out", "purchase", "1-2", " ", "x" * 129]),
    st.lists(st.sampled_from(["1-2", "12-0", "x", 3]), max_size=3),
)


def _bodies(*names: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from([*names, "other"]), SCALARS, max_size=len(names) + 1)


def _schema_accepts(model: type[Model], body: dict[str, Any]) -> bool:
    doc = spec()
    root = {"$ref": f"#/components/schemas/{model.__name__}", "components": doc["components"]}
    return Draft202012Validator(root).is_valid(body)


def _model_accepts(model: type[Model], body: dict[str, Any]) -> bool:
    try:
        model.model_validate_json(orjson.dumps(body), context={"region": "GB"})  # as the server reads
    except (ValidationError, Unprocessable):
        return False
    return True


CASES = [
    (ContactEventIn, ("type", "value", "id")),
    (ConsentIn, ("status", "source", "note")),
    (SuppressionIn, ("reason", "source")),
    (ReplayIn, ("webhook", "ids")),
]


@pytest.mark.parametrize(("model", "names"), CASES, ids=[m.__name__ for m, _ in CASES])
def test_the_description_and_the_server_agree_on_every_body(
    model: type[Model], names: tuple[str, ...]
) -> None:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=_bodies(*names))
    def agree(body: dict[str, Any]) -> None:
        assert _schema_accepts(model, body) == _model_accepts(model, body), body

    agree()


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/flows/nps/start", {"contacts": None}, "contacts: "),
        ("/v1/flows/nps/start", {"contacts": ["+447700900123"], "arms": [{"name": "a", "weight": "1"}]},
         "arms[0].weight: "),
        ("/v1/webhooks/dead:replay", {"ids": None}, "ids: "),
        ("/v1/contacts/+447700900123/events", {"type": "purchase", "value": True}, "value: "),
    ],
)  # fmt: skip
async def test_a_wrong_value_is_refused_naming_its_path(
    api: aiohttp.ClientSession, path: str, body: dict[str, Any], field: str
) -> None:
    async with api.post(path, json=body) as r:
        err = (await r.json())["error"]
    assert r.status == 422 and err["code"] == "invalid", err
    assert err["message"].startswith(field), err


async def test_an_unknown_key_names_the_keys_the_route_reads(api: aiohttp.ClientSession) -> None:
    async with api.put("/v1/contacts/+447700900123/consent", json={"status": "opted_in", "sauce": 1}) as r:
        err = (await r.json())["error"]
    assert r.status == 422
    assert err["message"] == "sauce: unknown field (allowed: note, purpose, source, status)"


NAMES = st.sampled_from(["city", "first_name", "_x", "a\n", "9a", "number", "tags", "x" * 65, "été"])
VALUES = st.one_of(
    SCALARS, st.lists(st.one_of(st.none(), st.integers(0, 3), st.text(max_size=3)), max_size=2)
)
CONTACT_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "fields": st.one_of(st.none(), st.dictionaries(NAMES, VALUES, max_size=3), SCALARS),
        "tags": st.one_of(
            st.none(), st.lists(st.sampled_from(["vip", "a-b", "x y", "", "t\n", 3]), max_size=3), SCALARS
        ),
        "language": st.sampled_from([None, "en", "pt-BR", "English", "en\n", "e", 3]),
        "timezone": st.sampled_from([None, "Europe/London", "Mars/Olympus", "UTC", "posixrules", 3, ""]),
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=CONTACT_BODIES)
def test_the_description_and_the_server_agree_on_a_contact(body: dict[str, Any]) -> None:
    """ContactIn's schemas are hooks beside the checks engine/core/contacts.py makes (the import's
    too), built from the same constants: they must still accept exactly what the checks accept."""
    assert _schema_accepts(ContactIn, body) == _model_accepts(ContactIn, body), body
