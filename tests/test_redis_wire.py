"""The store's connections pack commands through hiredis directly (engine/core/redis_wire.py):
the same bytes on the wire as redis-py's own packing, for every argument type a caller passes,
and the same refusals."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from engine.core.redis_wire import LeanConnection, lean
from engine.core.store import Store
from tests.conftest import make_config

PLAIN = Connection()
LEAN = LeanConnection()

args = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
)
names = st.sampled_from(["EVALSHA", "SET", "CLIENT SETNAME", b"XADD", b"CONFIG GET"])


@given(names, st.lists(args, max_size=70))
def test_the_bytes_are_redis_pys(name: str | bytes, rest: list[object]) -> None:
    assert b"".join(LEAN.pack_command(name, *rest)) == b"".join(PLAIN.pack_command(name, *rest))


def test_odd_arguments_are_redis_pys_too() -> None:
    assert b"".join(LEAN.pack_command("SET", bytearray(b"k"), memoryview(b"v"))) == b"".join(
        PLAIN.pack_command("SET", bytearray(b"k"), memoryview(b"v"))
    )
    assert b"".join(LEAN.pack_command("ZADD", "z", math.inf, "m")) == b"".join(
        PLAIN.pack_command("ZADD", "z", math.inf, "m")
    )
    with pytest.raises(DataError):  # a bool is a mistake, said as redis-py says it
        LEAN.pack_command("SET", "k", True)
    with pytest.raises(DataError):
        LEAN.pack_command("SET", "k", None)


async def test_the_store_talks_to_redis_through_them(redis_url: str) -> None:
    store = Store.connect(redis_url, make_config(redis_url).redis)
    try:
        if store.cluster:
            pytest.skip("the cluster client builds its own node connections")
        assert store.redis.connection_pool.connection_class is lean(Connection)
        await store.redis.set("wire:k", "héllo ✓")
        assert await store.redis.get("wire:k") == "héllo ✓".encode()
        assert await store.redis.eval("return ARGV[1] .. ARGV[2]", 0, 1.5, -3) == b"1.5-3"
    finally:
        await store.close()
