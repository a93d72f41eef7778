"""The Flows page's list: each flow in use with its versions, and each file in the flows
directory with its validation status, a file that fails showing its ``file:line`` errors.

What runs is the registry the engine loaded (all or nothing: a reload refuses the whole set if
one file is invalid, and the old set goes on running). So the list reads two things: the loaded
flows (and every older version this process still knows, for conversations that started on
it), and the directory as it is now, validated the way a reload would (the same
:meth:`FlowRegistry.from_dir`, off the event loop) so a broken edit shows before anyone reloads.
The directory's check is kept until a file in it changes (name, size or modification time).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from engine.core.errors import FlowError, FlowErrors
from engine.flows import Flow, FlowRegistry

#: What a row's ``status`` says.
VALID, CHANGED, INVALID, MISSING, NEW = "valid", "changed", "invalid", "missing", "new"


@dataclass
class FlowRow:
    #: The flow's name (the file's name, without .yaml, when the file does not load).
    name: str
    #: The file, relative to the flows directory ("" when it is gone).
    file: str
    #: valid (in use, the file unchanged) | changed (a reload would take the file's new version)
    #: | invalid (the file fails validation: ``errors``) | missing (in use, the file is gone) |
    #: new (a valid file not loaded yet).
    status: str
    #: The version in use (None: not loaded).
    flow: Flow | None = None
    #: Every version this process knows, newest load first: (version, digest, in use now).
    versions: list[tuple[int, str, bool]] = field(default_factory=list)
    #: The file's problems, as ``file:line: node 'x': problem``.
    errors: list[str] = field(default_factory=list)


@dataclass
class DirCheck:
    fingerprint: tuple[tuple[str, int, int], ...]
    #: file name -> digest of the flow it holds, when the directory loaded whole
    digests: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: file name -> its problems (a problem with no file, e.g. the directory gone, under "")
    errors: dict[str, list[str]] = field(default_factory=dict)


def _fingerprint(root: Path) -> tuple[tuple[str, int, int], ...]:
    files = sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml"))
    out = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        out.append((f.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _check(root: Path, registry: FlowRegistry, fingerprint: tuple[tuple[str, int, int], ...]) -> DirCheck:
    """Validate the directory as a reload would (blocking: run it in a thread)."""
    out = DirCheck(fingerprint)
    try:
        disk = FlowRegistry.from_dir(root, registry.limits)
    except FlowErrors as exc:
        for e in exc.errors:
            out.errors.setdefault(_file_of(e, root), []).append(_said(e, root))
        disk = None
    for name, _, _ in fingerprint:
        if name in out.errors:
            continue
        text = _read(root / name)
        if text is None:
            continue
        # The loader's digest (engine/flows/loader.py): the version a session is pinned to.
        digest = hashlib.blake2b(text.encode(), digest_size=6).hexdigest()
        flow_name = next(
            (f.name for f in (disk.flows.values() if disk else []) if Path(f.source).name == name), ""
        )
        out.digests[name] = (flow_name, digest)
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _file_of(e: FlowError, root: Path) -> str:
    path = Path(e.file)
    return path.name if path.parent == root else ""


def _said(e: FlowError, root: Path) -> str:
    """The error as the CLI says it, with the file named relative to the flows directory."""
    shown = FlowError(Path(e.file).name if Path(e.file).parent == root else e.file, e.line, e.node, e.problem)
    return str(shown)


class FlowList:
    """The list, with the directory's check cached until the directory changes."""

    def __init__(self) -> None:
        self._check: DirCheck | None = None
        self._lock = asyncio.Lock()

    async def rows(self, flows_dir: str, registry: FlowRegistry) -> list[FlowRow]:
        root = Path(flows_dir)
        async with self._lock:
            fp = await asyncio.to_thread(_fingerprint, root)
            if self._check is None or self._check.fingerprint != fp:
                self._check = await asyncio.to_thread(_check, root, registry, fp)
            check = self._check
        return build_rows(root, registry, check)


def build_rows(root: Path, registry: FlowRegistry, check: DirCheck) -> list[FlowRow]:
    rows: dict[str, FlowRow] = {}
    by_file: dict[str, Flow] = {}
    for flow in registry.flows.values():
        file = Path(flow.source).name if Path(flow.source).parent == root else flow.source
        by_file[file] = flow
        versions = [
            (f.version, d, d == flow.digest)
            for (n, d), f in reversed(registry.versions.items())
            if n == flow.name
        ]
        rows[flow.name] = FlowRow(flow.name, file, MISSING, flow, versions)
    for file, _, _ in check.fingerprint:
        loaded = by_file.get(file)
        if file in check.errors:
            row = rows.get(loaded.name) if loaded else None
            if row is None:
                row = rows[f"\0{file}"] = FlowRow(Path(file).stem, file, INVALID)
            row.status, row.errors = INVALID, check.errors[file]
            continue
        name, digest = check.digests.get(file, ("", ""))
        if loaded is not None:
            rows[loaded.name].status = VALID if digest == loaded.digest else CHANGED
        else:  # not loaded yet: a reload would take it (if the whole set is valid)
            rows[f"\0{file}"] = FlowRow(name or Path(file).stem, file, NEW)
    if "" in check.errors:
        rows["\0"] = FlowRow("(flows directory)", "", INVALID, errors=check.errors[""])
    return sorted(rows.values(), key=lambda r: (r.name, r.file))
