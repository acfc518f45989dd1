"""Configuration files: ``ratemw.toml``, or the ``[tool.ratemw]`` table of ``pyproject.toml``.

The top-level keys are the ``Limiter`` keyword arguments; ``[[rules]]`` tables are route rules.
Callables (the key function, hooks, metrics) are named by import path. Every error names the
file, the key and the bad value, and is raised when the file is loaded, never at request time.

Example ``ratemw.toml``::

    storage = "redis://localhost:6379/0"
    strategy = "sliding-window-counter"
    default_limits = ["100/minute", "2000/hour"]
    key = { type = "client_ip", trusted_proxies = ["10.0.0.0/8"] }
    on_breach = "myapp.hooks:log_breach"

    [[rules]]
    path = "/static/*"
    limit = "300/minute"

and in the app::

    from ratemw import RateLimitMiddleware
    from ratemw.config import load

    config = load()                  # ./ratemw.toml, else [tool.ratemw] in ./pyproject.toml
    app.add_middleware(RateLimitMiddleware, limiter=config.limiter)   # rules included

The environment overrides the file: ``RATEMW_STORAGE`` (a storage URI) and ``RATEMW_ENABLED``
(``true``, ``false``, ``1`` or ``0``; empty means unset).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ratemw.config.env import ENV_ENABLED, ENV_STORAGE, environment
from ratemw.config.file import CONFIG_FILES, find, parse, read
from ratemw.config.file import tomllib as tomllib  # the TOML reader: tomli on Python 3.10
from ratemw.config.rules import build_rules
from ratemw.config.values import Where, check, setting
from ratemw.errors import ConfigurationError
from ratemw.limiter import Limiter
from ratemw.policy.rules import Rule

__all__ = ["CONFIG_FILES", "Config", "load", "loads"]

# Limiter arguments a file cannot set: a clock is for tests, rules come as [[rules]].
_NOT_FROM_FILES = frozenset({"clock", "rules"})


@dataclass(frozen=True)
class Config:
    """A loaded configuration.

    Attributes:
        limiter: the ``Limiter``, with the file's rules attached (``limiter.settings.rules``), so
            ``RateLimitMiddleware(app, limiter=config.limiter)`` applies them.
        rules: the file's ``[[rules]]``, as ``Rule`` objects.
        source: the file read.
        settings: the settings as read (after environment overrides), by key.
        overrides: the environment variables that overrode the file.

    Example::

        config = load("deploy/ratemw.toml")
        app.add_middleware(RateLimitMiddleware, limiter=config.limiter)
    """

    limiter: Limiter
    rules: tuple[Rule, ...]
    source: Path
    settings: Mapping[str, Any] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()


def load(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] = os.environ
) -> Config:
    """Load a configuration file and build its ``Limiter``.

    Args:
        path: a ``ratemw.toml`` (any name but ``pyproject.toml`` is read whole), a
            ``pyproject.toml`` (its ``[tool.ratemw]`` table is read), or a directory to
            search. ``None`` searches the current directory: ``ratemw.toml`` first, then
            ``pyproject.toml`` if it has a ``[tool.ratemw]`` table.
        env: the environment whose ``RATEMW_STORAGE`` and ``RATEMW_ENABLED`` override the
            file (``os.environ`` by default; pass ``{}`` to ignore it).

    Raises:
        ConfigurationError: no file was found, or the file or the environment holds a bad
            value; the message names the file, the key and the value.

    Example::

        config = load()
        limiter = config.limiter
    """
    found = find(path)
    table, prefix = read(found)
    return _build(table, found, str(found), prefix, env)


def loads(text: str, *, source: str = "ratemw.toml", env: Mapping[str, str] = os.environ) -> Config:
    """Build a configuration from TOML text (as ``ratemw.toml`` holds it).

    Example::

        config = loads('default_limits = "100/minute"', env={})
    """
    return _build(parse(text, source), Path(source), source, "", env)


# -- building ---------------------------------------------------------------------------------


def _valid_keys() -> list[str]:
    names = [p for p in inspect.signature(Limiter).parameters if p not in _NOT_FROM_FILES]
    return sorted([*names, "rules"])


def _check_arguments(where: Where, kwargs: dict[str, Any], from_env: dict[str, Any]) -> str:
    """Build a ``Limiter`` from one argument at a time, so that errors name the key.

    Returns the strategy, which decides whether other values (a burst) are valid.
    """
    strategy: str = kwargs.get("strategy", "fixed-window")
    check(where, "strategy", partial(Limiter, strategy=strategy))
    for key, value in kwargs.items():
        if key in ("strategy", "storage_options"):
            continue
        if key in from_env:
            variable = ENV_STORAGE if key == "storage" else ENV_ENABLED
            try:
                Limiter(**{key: value})
            except ConfigurationError as exc:
                raise ConfigurationError(f"environment variable {variable}: {exc}") from None
            continue
        check(where, key, partial(Limiter, strategy=strategy, **{key: value}))
    if "storage_options" in kwargs:
        options = kwargs["storage_options"]
        storage = kwargs.get("storage", "memory://")
        check(
            where,
            "storage_options",
            partial(Limiter, storage=storage, storage_options=dict(options)),
        )
    return strategy


def _build(
    table: dict[str, Any], found: Path, source: str, prefix: str, env: Mapping[str, str]
) -> Config:
    where = Where(source, prefix)
    valid = _valid_keys()
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise where.unknown("", unknown, valid)
    from_env, overrides = environment(env)
    settings = {**table, **from_env}
    kwargs = {key: setting(where, key, value) for key, value in settings.items() if key != "rules"}
    strategy = _check_arguments(where, kwargs, from_env)
    rules = build_rules(where, settings.get("rules", []), strategy)
    if "storage_options" in kwargs:  # the storage takes options out of the dict it is given
        kwargs["storage_options"] = dict(kwargs["storage_options"])
    try:
        limiter = Limiter(rules=rules, **kwargs)
    except ConfigurationError as exc:  # pragma: no cover - every argument was checked above
        raise ConfigurationError(f"{source}: {exc}") from None
    return Config(
        limiter=limiter, rules=rules, source=found, settings=settings, overrides=overrides
    )
