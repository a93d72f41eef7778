"""Where the CPU goes, per process, during a benchmark step (Linux ``/proc``).

``Sampler(roots)`` names the processes to follow: each root pid and its descendants (Parley's
``parley run`` tree with its worker and API processes), Redis, and the harness itself. A
``sample()`` before and after a step gives CPU seconds per process; divided by the turns of the
step that is the CPU each process spends per turn, which is what the capacity model in
docs/scaling.md is built from. Redis's own counters (INFO commandstats, net bytes) give the
commands, calls and bytes per turn by kind.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, utime + stime seconds), or None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2 :].split()
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / TICK


def _label(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"pid {pid}"
    words = [a.decode(errors="replace") for a in argv if a]
    if any("redis-server" in w for w in words[:1]):
        return "redis"
    if "worker" in words:  # `parley worker --index N`, a process `parley run --workers N` started
        index = words[words.index("--index") + 1] if "--index" in words else "0"
        return f"worker {index}"
    if "--role" in words:  # `parley run --role api|worker|sender`
        return words[words.index("--role") + 1]
    if any(w.endswith("engine.app.cli") or w.endswith("/parley") for w in words):
        return "parley"
    return os.path.basename(words[0]) if words else f"pid {pid}"


class Sampler:
    """CPU seconds of a set of process trees, sampled on demand."""

    def __init__(self, roots: Iterable[int], names: dict[int, str] | None = None) -> None:
        self.roots = list(roots)
        self.names = dict(names or {})

    def _tree(self) -> dict[int, float]:
        stats: dict[int, tuple[int, float]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                got = _stat(int(entry))
                if got is not None:
                    stats[int(entry)] = got
        keep: set[int] = {r for r in self.roots if r in stats}
        grew = True
        while grew:
            grew = False
            for pid, (ppid, _) in stats.items():
                if ppid in keep and pid not in keep:
                    keep.add(pid)
                    grew = True
        return {pid: stats[pid][1] for pid in keep}

    def sample(self) -> dict[int, float]:
        return self._tree()

    def between(self, before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
        """CPU seconds per labelled process between two samples (processes that came or went
        count from zero / to their last sample)."""
        out: dict[str, float] = {}
        for pid in set(before) | set(after):
            spent = after.get(pid, before.get(pid, 0.0)) - before.get(pid, 0.0)
            if spent <= 0:
                continue
            name = self.names.get(pid) or _label(pid)
            out[name] = out.get(name, 0.0) + spent
        return out


def per_turn_us(spent: dict[str, float], turns: int) -> dict[str, float]:
    """CPU microseconds per turn by process, and their total."""
    if turns <= 0:
        return {}
    out = {name: round(sec * 1e6 / turns, 1) for name, sec in sorted(spent.items())}
    out["total"] = round(sum(spent.values()) * 1e6 / turns, 1)
    return out


def command_delta(before: dict[str, Any], after: dict[str, Any], turns: int) -> dict[str, float]:
    """Redis commands per turn by command (INFO commandstats deltas), the busiest first."""
    if turns <= 0:
        return {}
    out: dict[str, float] = {}
    for name, stats in after.items():
        calls = int(stats["calls"]) - int(before.get(name, {}).get("calls", 0))
        if calls > 0:
            out[name.removeprefix("cmdstat_")] = round(calls / turns, 2)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
