"""``/v1/openapi.json`` describes exactly the routes the app serves, and is a valid OpenAPI 3.1 document."""

from __future__ import annotations

from typing import Any

import aiohttp
from openapi_spec_validator import validate

from engine.api.app import build_app
from engine.app.runtime import Runtime


def _served(rt: Runtime) -> set[tuple[str, str]]:
    app = build_app(rt)
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method not in ("HEAD", "*")
    }


async def _doc(rt: Runtime) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,  # public: no bearer key
        http.get(f"http://127.0.0.1:{rt.http_port}/v1/openapi.json") as r,
    ):
        assert r.status == 200
        doc: dict[str, Any] = await r.json()
        return doc


async def test_the_description_lists_every_route_and_only_those(rt: Runtime) -> None:
    doc = await _doc(rt)
    described = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    served = _served(rt)
    assert served - described == set(), "routes without a description"
    assert described - served == set(), "described routes the app does not serve"
    validate(doc)


async def test_every_protected_route_declares_its_401_and_public_ones_none(rt: Runtime) -> None:
    doc = await _doc(rt)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            public = op.get("security") == []
            if not public:
                assert "401" in op["responses"], f"{method} {path} needs a key but declares no 401"
            real = (
                path.replace("{number}", "+447700900123")
                .replace("{flow}", "nps")
                .replace("{gateway}", "carrier")
            )
            async with (  # the app agrees on which routes need a key
                aiohttp.ClientSession() as http,
                http.request(method.upper(), f"http://127.0.0.1:{rt.http_port}{real}") as r,
            ):
                assert (r.status == 401) == (not public), (method, path, r.status)
