"""``--config FILE`` is accepted before the command and after it (README and docs/operations.md
write ``parley run --config parley.yaml``), for every command and action."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.app.cli import _parser
from tests.conftest import run_parley

#: Every command line the CLI has, with its required arguments.
COMMANDS = [
    ["run"],
    ["run", "--workers", "2"],
    ["worker", "--index", "1"],
    ["demo"],
    ["chat", "nps", "--contact", "+447700900123"],
    ["contacts", "import", "people.csv"],
    ["contacts", "forget", "+447700900123"],
    ["flows", "validate"],
    ["flows", "graph", "nps"],
    ["smsc-sim"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_config_is_read_before_or_after_any_command(command: list[str]) -> None:
    parser = _parser()
    before = parser.parse_args(["--config", "a.yaml", *command])
    after = parser.parse_args([*command, "--config", "a.yaml"])
    at_end = parser.parse_args([*command[:1], "--config", "a.yaml", *command[1:]])
    assert before.config == after.config == at_end.config == "a.yaml"
    assert parser.parse_args(command).config is None


def test_config_after_the_command_wins_over_one_before() -> None:
    args = _parser().parse_args(["--config", "a.yaml", "flows", "validate", "--config", "b.yaml"])
    assert args.config == "b.yaml"


def _config_with_broken_flows(tmp_path: Path) -> Path:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "broken.yaml").write_text("name: broken\nstart: a\nnodes:\n  a: {say: '{{ oops', end: x}\n")
    cfg = tmp_path / "parley.yaml"
    cfg.write_text(f"engine:\n  flows_dir: {flows}\n")
    return cfg


@pytest.mark.parametrize("where", ["before", "after"])
def test_run_reads_the_config_given_after_the_command(tmp_path: Path, where: str) -> None:
    cfg = _config_with_broken_flows(tmp_path)
    args = ["--config", str(cfg), "run"] if where == "before" else ["run", "--config", str(cfg)]
    proc = run_parley(*args, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "broken.yaml:4" in proc.stderr and "unrecognized arguments" not in proc.stderr


@pytest.mark.parametrize(
    "args",
    [["flows", "validate", "--config", "{cfg}"], ["flows", "--config", "{cfg}", "validate"]],
)
def test_flows_validate_reads_the_config_given_after_the_command(tmp_path: Path, args: list[str]) -> None:
    cfg = _config_with_broken_flows(tmp_path)
    proc = run_parley(*(a.format(cfg=cfg) for a in args))
    assert proc.returncode != 0 and "broken.yaml:4" in proc.stderr, proc.stderr


def test_chat_reads_the_config_given_after_the_command(tmp_path: Path, redis_url: str) -> None:
    cfg = tmp_path / "parley.yaml"
    cfg.write_text(f"redis:\n  url: {redis_url}\n")
    proc = run_parley("chat", "nps", "--contact", "+447700900123", "--config", str(cfg), stdin="")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "-- still waiting at ask_score; results: none"
