"""Calling a Lua script through its typed wrapper, for the scripts' contract tests."""

from __future__ import annotations

from typing import Any, Protocol

from engine.core.store import Store


class Call(Protocol):
    """A script's typed arguments (engine/core/scripts/*.py, gateways/scripts/*.py)."""

    def to_keys(self) -> list[str]: ...
    def to_argv(self) -> Any: ...


async def run(store: Store, name: str, call: Call) -> Any:
    return await store.run(name, keys=call.to_keys(), args=call.to_argv())


def text(d: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in d.items()}
