"""How big a flow and what it says may be: bounds that keep a hostile or mistaken file from
stalling or crashing the process that loads it, and a message from costing a fortune.

Every bound is refused with a ``file:line`` error at load (a message over the limit that only
data can produce fails its run at render time instead, see docs/flows.md). The defaults sit far
above any sensible flow: the shipped ones are a few KiB, nest 8 levels and have under 20 nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Limits:
    #: A flow file larger than this is refused before it is parsed (``engine.max_flow_bytes``).
    max_bytes: int = 262_144
    #: YAML mappings and lists nested deeper than this are refused (``engine.max_flow_depth``).
    max_depth: int = 32
    #: A flow with more nodes than this is refused (``engine.max_flow_nodes``).
    max_nodes: int = 1_000
    #: A message longer than this many SMS segments is not sent (``engine.max_segments``).
    max_segments: int = 10

    @classmethod
    def of(cls, engine: Any) -> Limits:
        """The limits an ``EngineConfig`` sets."""
        return cls(engine.max_flow_bytes, engine.max_flow_depth, engine.max_flow_nodes, engine.max_segments)


#: Template blocks and brackets nested deeper than this are refused; Python's compiler allows
#: 20 nested loops, and Jinja's parser recurses once or more per level.
MAX_TEMPLATE_NESTING = 16
