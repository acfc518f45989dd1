"""The environment's overrides of a configuration file: ``RATEMW_STORAGE``, ``RATEMW_ENABLED``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ratemw.errors import ConfigurationError

__all__ = ["ENV_ENABLED", "ENV_STORAGE", "environment"]

ENV_STORAGE = "RATEMW_STORAGE"
ENV_ENABLED = "RATEMW_ENABLED"

_TRUE = ("true", "1")
_FALSE = ("false", "0")


def environment(env: Mapping[str, str]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The settings ``env`` overrides, and the names of the variables that override them.

    An empty variable counts as unset.
    """
    found: dict[str, Any] = {}
    names: list[str] = []
    storage = env.get(ENV_STORAGE, "")
    if storage:
        found["storage"] = storage
        names.append(ENV_STORAGE)
    enabled = env.get(ENV_ENABLED, "").strip()
    if enabled:
        if enabled.lower() in _TRUE:
            found["enabled"] = True
        elif enabled.lower() in _FALSE:
            found["enabled"] = False
        else:
            raise ConfigurationError(
                f"environment variable {ENV_ENABLED}: expected true, false, 1 or 0, got {enabled!r}"
            )
        names.append(ENV_ENABLED)
    return found, tuple(names)
