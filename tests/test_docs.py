"""The documents a user reads first stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

from engine.app.settings import load_config
from engine.core.config import Config, _leaves
from engine.core.metrics import Metrics
from engine.core.passwords import hash_password
from tests.conftest import ROOT


def test_example_config_is_valid() -> None:
    cfg = load_config(ROOT / "parley.example.yaml", env={})
    assert cfg.gateways["provider"]["type"] == "http"


def test_the_example_configs_commented_console_and_smpp_server_load_when_switched_on(tmp_path: Path) -> None:
    """What a user does with parley.example.yaml's last sections: uncomment them (keeping the
    prose comments) and put real hashes in; they must load as written."""
    text = (ROOT / "parley.example.yaml").read_text()
    cut = text.index("# The browser console at /console/")
    on = [
        re.sub(r"^# ?", "", line)
        for line in text[cut:].splitlines()
        if line.strip() and not re.match(r"^# [A-Z]", line)  # a sentence stays a comment
    ]
    switched = "\n".join(on).replace('"$argon2id$..."', repr(hash_password("pw")))
    path = tmp_path / "parley.yaml"
    path.write_text(text[:cut] + switched + "\n")
    cfg = load_config(path, env={})
    assert [(u.name, u.role) for u in cfg.console.users] == [
        ("ada", "admin"),
        ("sam", "operator"),
        ("vic", "viewer"),
    ]
    (acme,) = cfg.smpp_server.accounts
    assert cfg.smpp_server.listen == "0.0.0.0:2775" and acme.system_id == "acme" and acme.keep_source


def test_every_config_key_and_env_override_is_documented() -> None:
    doc = (ROOT / "docs/configuration.md").read_text()
    for env_name, (path, _) in _leaves(Config).items():
        assert f"`{'.'.join(path)}`" in doc, f"{'.'.join(path)} missing from docs/configuration.md"
        assert f"`{env_name}`" in doc, f"{env_name} missing from docs/configuration.md"


def test_every_exported_metric_is_documented() -> None:
    doc = (ROOT / "docs/operations.md").read_text()
    for family in Metrics().registry.collect():
        assert f"`{family.name}" in doc, f"{family.name} missing from docs/operations.md"


def test_readme_quick_start_is_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_every_connector_key_is_documented_under_its_type() -> None:
    import dataclasses
    import re

    from gateways.registry import GATEWAY_TYPES

    doc = (ROOT / "docs/gateways.md").read_text()
    sections = dict(re.findall(r"^### `type: (\w+)`[^\n]*\n(.*?)(?=^##)", doc, re.M | re.S))
    for kind, cls in GATEWAY_TYPES.items():
        assert kind in sections, f"docs/gateways.md has no section ### `type: {kind}`"
        for field in dataclasses.fields(cls.Config):
            assert f"`{field.name}`" in sections[kind], f"gateways.md, type: {kind}: `{field.name}` missing"
