"""How deep the queues are: each shard's inbound stream (length, pending, oldest entry) and each
connector's outbound lanes, read in the caller's pipeline (one round trip with whatever else it
asks). ``/metrics`` (the runtime's gauges) and the console's Overview both read them this way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.core import keys


@dataclass(frozen=True)
class ShardDepth:
    """One shard's inbound stream; None where Redis answered that part with an error."""

    length: int | None
    pending: int | None
    #: The oldest entry's id time (ms; Redis's clock), None when the stream is empty.
    first_ms: int | None


@dataclass(frozen=True)
class Depths:
    shards: list[ShardDepth]
    #: (connector, lane) -> every shard's length, None for a shard Redis answered with an error.
    lanes: dict[tuple[str, str], list[int | None]]


class DepthQuery:
    """The reads queued on a pipeline (:meth:`ask`): the first :attr:`count` of its answers."""

    def __init__(self, pipe: Any, shards: int, senders: Sequence[str]) -> None:
        self.shards = shards
        self.lanes = [(gw, lane) for gw in senders for lane in keys.LANES]
        for shard in range(shards):
            stream = keys.inbound_stream(shard)
            pipe.xlen(stream)
            pipe.xpending(stream, keys.INBOUND_GROUP)
            pipe.xrange(stream, count=1)
        for gw, lane in self.lanes:
            for shard in range(shards):
                pipe.xlen(keys.outbound_stream(shard, gw, lane))
        #: How many answers are these reads' (the caller's own follow).
        self.count = 3 * shards + len(self.lanes) * shards

    def read(self, res: Sequence[Any]) -> Depths:
        """The depths out of the pipeline's answers (``execute(raise_on_error=False)``)."""
        n = self.shards
        out = []
        for shard in range(n):
            length, pending, first = res[3 * shard : 3 * shard + 3]
            first_ms = None
            if first and not isinstance(first, Exception):
                raw = first[0][0]
                first_ms = int((raw.decode() if isinstance(raw, bytes) else str(raw)).split("-")[0])
            out.append(
                ShardDepth(
                    None if isinstance(length, Exception) else int(length),
                    None if isinstance(pending, Exception) else int(pending["pending"]),
                    first_ms,
                )
            )
        base = 3 * n
        lanes = {
            pair: [
                None if isinstance(v, Exception) else int(v) for v in res[base + i * n : base + (i + 1) * n]
            ]
            for i, pair in enumerate(self.lanes)
        }
        return Depths(out, lanes)
