"""The configuration as the app loads it: the core's schema and checks, plus the checks owned by
the parts the app composes (send windows, connectors, routes). Everything that reads a
configuration file goes through here, so a bad connector option fails at load, not at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from engine.core import config
from engine.core.config import Config
from engine.governance import quiet
from gateways import registry

#: Cross-field checks of the parts above the core, in the order they run after the core's.
CHECKS = (quiet.check_config, registry.check_config)


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """:func:`engine.core.config.load_config` with every part's checks."""
    return config.load_config(path, env, overrides=overrides, checks=CHECKS)
