"""The store's connections pack commands through hiredis directly (engine/core/redis_wire.py):
the same bytes on the wire as redis-py's own packing, for every argument type a caller passes,
and the same refusals."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import DataError, NoScriptError, ResponseError

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


async def test_a_pipelines_replies_read_lean_are_redis_pys(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replies hiredis already holds are handed over without redis-py's per-reply wait: the same
    values (callbacks applied), the same errors in place, in order; and most replies of a large
    pipeline take that path (redis-py's own read runs only when one must wait for bytes)."""
    plain_store = Store.connect(redis_url, make_config(redis_url).redis)
    if plain_store.cluster:
        await plain_store.close()
        pytest.skip("the cluster client builds its own node connections")
    plain_store.redis.connection_pool.connection_class = Connection
    lean_store = Store.connect(redis_url, make_config(redis_url).redis)

    async def batch(r: Any) -> list[Any]:
        async with r.pipeline(transaction=False) as pipe:
            for i in range(150):
                pipe.set(f"wire:p:{i}", "v" * (i % 7))
                pipe.get(f"wire:p:{i}")
            pipe.hset("wire:h", mapping={"a": "1", "b": "2"})
            pipe.hgetall("wire:h")  # a callback turns RESP3's map into a dict
            pipe.hget("wire:p:1", "x")  # WRONGTYPE, in its place
            pipe.evalsha("0" * 40, 0)  # NOSCRIPT, in its place
            pipe.xadd("wire:s", {"k": "v"}, id="1-1")
            pipe.xrange("wire:s")
            pipe.zadd("wire:z", {"m": 1.5})
            pipe.zrange("wire:z", 0, -1, withscores=True)
            return list(await pipe.execute(raise_on_error=False))

    try:
        await plain_store.redis.delete("wire:h", "wire:s", "wire:z")
        want = await batch(plain_store.redis)
        await plain_store.redis.delete("wire:h", "wire:s", "wire:z")
        slow_reads = 0
        original = Connection.read_response

        async def counted(self: Connection, *a: Any, **kw: Any) -> Any:
            nonlocal slow_reads
            slow_reads += 1
            return await original(self, *a, **kw)

        monkeypatch.setattr(Connection, "read_response", counted)
        got = await batch(lean_store.redis)
        monkeypatch.undo()
        assert [type(x) for x in got] == [type(x) for x in want]
        assert [str(x) for x in got] == [str(x) for x in want]
        assert isinstance(got[302], ResponseError) and "WRONGTYPE" in str(got[302])
        assert isinstance(got[303], NoScriptError)
        assert got[301] == {b"a": b"1", b"b": b"2"} and got[307] == [(b"m", 1.5)]
        assert slow_reads < len(got) // 4, slow_reads  # 308 replies; only the waits go the long way
        assert await lean_store.redis.get("wire:p:3") == b"vvv"  # the connection is in step after
    finally:
        await plain_store.close()
        await lean_store.close()
