"""The documents a user reads first stay true to the code."""

from __future__ import annotations

from engine.app.settings import load_config
from engine.core.config import Config, _leaves
from engine.core.metrics import Metrics
from tests.conftest import ROOT


def test_example_config_is_valid() -> None:
    cfg = load_config(ROOT / "parley.example.yaml", env={})
    assert cfg.gateways["provider"]["type"] == "http"


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
