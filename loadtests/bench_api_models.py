"""Decode and validate cost of request models, msgspec against pydantic: the measurement behind
engine/api/schema.py's choice. Two bodies: a generic connector's inbound text and a flow start
(20 contacts, 2 arms). Best of 7 runs of 20,000 calls, microseconds per call.

    PYTHONPATH=. python loadtests/bench_api_models.py

msgspec is not a dependency: install it somewhere aside (``pip install --target /tmp/m msgspec``
and ``PYTHONPATH=.:/tmp/m``); without it only pydantic and plain orjson are measured."""

# No "from __future__ import annotations": msgspec reads the local classes' annotations.
import timeit
from collections.abc import Callable
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

INBOUND = b'{"from": "+447700900123", "to": "12345", "text": "YES please, 10 out of 10", "id": "msg-8f2c1a"}'
START = orjson.dumps({
    "contacts": [f"+4477009{i:05d}" for i in range(20)], "params": {"campaign": "winter"},
    "interrupt": False, "send_at": "2026-12-02T10:00", "holdout": 10,
    "arms": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1, "params": {"x": 1}}],
})  # fmt: skip
PHONE = r"^\+[1-9][0-9]{6,14}$"


class Inbound(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    sender: Annotated[str, Field(alias="from", pattern=PHONE)]
    to: str = ""
    text: Annotated[str, Field(max_length=10000)]
    id: Annotated[str, Field(min_length=1, max_length=128)]


class Arm(BaseModel):
    model_config = ConfigDict(strict=True)
    name: Annotated[str, Field(min_length=1)]
    weight: Annotated[float, Field(gt=0)] = 1
    params: dict[str, Any] = {}


class Start(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    contacts: Annotated[list[Annotated[str, Field(pattern=PHONE)]], Field(min_length=1, max_length=10000)]
    audience: list[dict[str, Any]] | None = None
    params: dict[str, Any] = {}
    interrupt: bool = False
    send_at: str | None = None
    holdout: Annotated[float, Field(ge=0, lt=100)] = 0
    arms: list[Arm] | None = None
    experiment: str | None = None


def _msgspec() -> tuple[Callable[[], Any], Callable[[], Any]] | None:
    try:
        import msgspec
    except ImportError:
        return None
    phone = Annotated[str, msgspec.Meta(pattern=PHONE)]

    class MInbound(msgspec.Struct, forbid_unknown_fields=True, rename={"sender": "from"}):
        sender: phone  # type: ignore[valid-type]
        text: Annotated[str, msgspec.Meta(max_length=10000)]
        id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
        to: str = ""

    class MArm(msgspec.Struct):
        name: Annotated[str, msgspec.Meta(min_length=1)]
        weight: Annotated[float, msgspec.Meta(gt=0)] = 1
        params: dict[str, Any] = {}

    class MStart(msgspec.Struct, forbid_unknown_fields=True):
        contacts: Annotated[list[phone], msgspec.Meta(min_length=1, max_length=10000)]  # type: ignore[valid-type]
        audience: list[dict[str, Any]] | None = None
        params: dict[str, Any] = {}
        interrupt: bool = False
        send_at: str | None = None
        holdout: Annotated[float, msgspec.Meta(ge=0, lt=100)] = 0
        arms: list[MArm] | None = None
        experiment: str | None = None

    inbound, start = msgspec.json.Decoder(MInbound), msgspec.json.Decoder(MStart)
    return (lambda: inbound.decode(INBOUND)), (lambda: start.decode(START))


def _us(fn: Callable[[], Any]) -> float:
    return min(timeit.repeat(fn, number=20_000, repeat=7)) / 20_000 * 1e6


def main() -> None:
    cases: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        "orjson.loads alone (no checks)": (lambda: orjson.loads(INBOUND), lambda: orjson.loads(START)),
        "pydantic model_validate_json": (
            lambda: Inbound.model_validate_json(INBOUND),
            lambda: Start.model_validate_json(START),
        ),
    }
    ms = _msgspec()
    if ms is not None:
        cases["msgspec Decoder(Struct).decode"] = ms
    print(f"{'us per call':40s} {'inbound':>8s} {'start':>8s}")
    for name, (inbound, start) in cases.items():
        print(f"{name:40s} {_us(inbound):8.2f} {_us(start):8.2f}")


if __name__ == "__main__":
    main()
