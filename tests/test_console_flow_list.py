"""The Flows page's list (engine/console/flow_list.py): each flow with its versions and
whether its file still validates; a broken file shows its ``file:line`` error before anyone
reloads, while the version loaded before goes on running."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from engine.console.flow_list import FlowList
from engine.flows import FlowRegistry

ROOT = Path(__file__).resolve().parent.parent


async def test_rows_say_valid_changed_invalid_new_and_missing(tmp_path: Path) -> None:
    for name in ("nps.yaml", "balance.yaml", "csat.yaml"):
        shutil.copy(ROOT / "rules" / name, tmp_path / name)
    registry = FlowRegistry.from_dir(tmp_path)
    listing = FlowList()
    rows = {r.name: r for r in await listing.rows(str(tmp_path), registry)}
    assert {n: r.status for n, r in rows.items()} == {"balance": "valid", "csat": "valid", "nps": "valid"}
    nps = registry.flows["nps"]
    assert rows["nps"].versions == [(nps.version, nps.digest, True)] and rows["nps"].file == "nps.yaml"

    text = (tmp_path / "nps.yaml").read_text()
    (tmp_path / "nps.yaml").write_text(text.replace("wait:", "wiat:", 1))
    (tmp_path / "balance.yaml").write_text((tmp_path / "balance.yaml").read_text() + "\n# edited\n")
    (tmp_path / "csat.yaml").unlink()
    shutil.copy(ROOT / "rules" / "reference.yaml", tmp_path / "reference.yaml")
    os.utime(tmp_path / "nps.yaml", ns=(1, 1))  # a different mtime, whatever the file system's grain

    rows = {r.name: r for r in await listing.rows(str(tmp_path), registry)}
    assert {n: r.status for n, r in rows.items()} == {
        "balance": "changed", "csat": "missing", "nps": "invalid", "reference": "new",
    }  # fmt: skip
    assert rows["nps"].flow is nps, "the loaded version goes on running"
    line = next(i for i, x in enumerate(text.splitlines(), 1) if "wait:" in x)
    assert f"nps.yaml:{line}: node 'ask_score': unknown key 'wiat'" in rows["nps"].errors[0]
