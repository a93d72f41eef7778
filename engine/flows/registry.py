"""The loaded flows by name and every version this process has seen: what a turn asks for a
flow (by trigger, by a session's pinned version) and what ``reload`` swaps in whole.
Parsing a file is engine/flows/loader.py's; this module only holds the results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.core.errors import FlowError, FlowErrors
from engine.flows.limits import Limits
from engine.flows.loader import load_flow
from engine.flows.model import Flow
from engine.flows.templates import make_environment
from engine.flows.text import fold


class FlowRegistry:
    """The loaded flows by name, plus every version seen by this process by (name, digest).

    New conversations take the current file; a conversation finishes on the version it started
    with (its state records the digest). Loading refuses the whole set if any file is invalid.
    """

    def __init__(self, flows: dict[str, Flow], limits: Limits | None = None) -> None:
        self.flows = flows
        #: The bounds these flows were loaded with (a stored version is re-read with them too).
        self.limits = limits or Limits()
        self._triggers = {t: f for f in flows.values() for t in f.triggers if not t.endswith(" *")}
        #: ``ORDER *``: the keyword followed by anything (the rest is ``params.rest``).
        self._prefixed = {t[:-2]: f for f in flows.values() for t in f.triggers if t.endswith(" *")}
        self.versions: dict[tuple[str, str], Flow] = {(f.name, f.digest): f for f in flows.values()}

    def for_state(self, state: dict[str, Any]) -> Flow | None:
        """The flow version a session runs on: pinned by digest, else the current one."""
        name, digest = state.get("f", ""), state.get("fh")
        if digest:
            return self.versions.get((name, digest))
        return self.flows.get(name)

    def knows(self, state: dict[str, Any]) -> bool:
        return not state.get("fh") or (state.get("f", ""), state["fh"]) in self.versions

    def remember(self, flow: Flow) -> None:
        self.versions[(flow.name, flow.digest)] = flow

    def succeed(self, old: FlowRegistry) -> None:
        """Keep the versions an older registry knew (sessions may still be on them)."""
        for key, flow in old.versions.items():
            self.versions.setdefault(key, flow)

    @classmethod
    def from_dir(cls, path: str | Path, limits: Limits | None = None) -> FlowRegistry:
        """Load every flow file in a directory; :class:`FlowErrors` lists every problem. Slow
        for big files (pure-Python YAML): call it off the event loop (``asyncio.to_thread``)."""
        limits = limits or Limits()
        root = Path(path)
        if not root.is_dir():
            raise FlowErrors([FlowError(str(root), None, None, "flows directory not found")])
        env = make_environment()
        flows: dict[str, Flow] = {}
        errors: list[FlowError] = []
        for file in sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml")):
            try:
                flow = load_flow(file, env, limits)
            except FlowErrors as exc:
                errors.extend(exc.errors)
                continue
            if flow.name in flows:
                errors.append(
                    FlowError(
                        str(file),
                        None,
                        None,
                        f"flow name {flow.name!r} is also used by {flows[flow.name].source}",
                    )
                )
            flows[flow.name] = flow
        for flow in flows.values():
            for node in flow.nodes.values():
                if node.start_flow and node.start_flow not in flows:
                    errors.append(
                        FlowError(
                            flow.source,
                            node.line,
                            node.name,
                            f"starts flow {node.start_flow!r}, which is not loaded",
                        )
                    )
        seen: dict[str, str] = {}
        for flow in flows.values():
            for t in flow.triggers:
                if t in seen:
                    errors.append(
                        FlowError(
                            flow.source,
                            None,
                            None,
                            f"trigger {t!r} is also a trigger of flow {seen[t]!r}",
                        )
                    )
                seen[t] = flow.name
        if errors:
            raise FlowErrors(errors)
        return cls(flows, limits)

    def get(self, name: str) -> Flow | None:
        return self.flows.get(name)

    def by_trigger(self, text: str) -> Flow | None:
        """The flow whose trigger keyword is the whole message (case and accents ignored)."""
        return self._triggers.get(fold(text).strip(" .!?"))

    def by_keyword(self, text: str) -> tuple[Flow, dict[str, str]] | None:
        """The flow a text starts and its params: a whole-message trigger (no params), else the
        longest ``KEYWORD *`` trigger the text begins with, the words after it as ``rest``
        (as written: "ORDER A-1042" gives ``{"rest": "A-1042"}``)."""
        exact = self.by_trigger(text)
        if exact is not None:
            return exact, {}
        if not self._prefixed:
            return None
        words = fold(text).split()
        for k in range(len(words) - 1, 0, -1):
            flow = self._prefixed.get(" ".join(words[:k]))
            if flow is not None:
                rest = " ".join(text.split()[k:]).strip(" .!?")
                return (flow, {"rest": rest}) if rest else None
        return None
