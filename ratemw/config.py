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

import difflib
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ratemw import keys
from ratemw._exceptions import ConfigurationError
from ratemw._groups import FAILURE_MODES, normalize_methods
from ratemw._limiter import Limiter
from ratemw._rules import Rule

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = ["CONFIG_FILES", "Config", "load", "loads"]

CONFIG_FILES = ("ratemw.toml", "pyproject.toml")
ENV_STORAGE = "RATEMW_STORAGE"
ENV_ENABLED = "RATEMW_ENABLED"

_TRUE = ("true", "1")
_FALSE = ("false", "0")
# Limiter arguments a file cannot set: a clock is for tests, rules come as [[rules]].
_NOT_FROM_FILES = frozenset({"clock", "rules"})
_LIMIT_KEYS = frozenset({"default_limits", "application_limits"})
_HOOK_KEYS = frozenset({"on_breach", "on_near_limit", "on_storage_error"})
_STRING_KEYS = frozenset({"storage", "strategy", "failure_mode", "key_prefix"})
_BOOL_KEYS = frozenset({"shadow", "enabled"})
_NUMBER_KEYS = frozenset({"near_limit_ratio", "concurrency_timeout"})
_TABLE_KEYS = frozenset({"storage_options", "breaker"})
_RULE_KEYS = (
    "path", "limit", "methods", "per_method", "shadow", "key", "cost", "exempt_when",
    "deduct_when", "failure_mode",
)
_KEY_TYPES: dict[str, Callable[..., Any]] = {"client_ip": keys.client_ip, "header": keys.header}
_TOML_WHERE = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")


@dataclass(frozen=True)
class Config:
    """A loaded configuration.

    Attributes:
        limiter: the ``Limiter``, with the file's rules attached (``limiter.rules``), so
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


# -- finding and reading the file -------------------------------------------------------------


def _find(path: str | os.PathLike[str] | None) -> Path:
    if path is not None and not Path(path).is_dir():
        return Path(path)
    folder = Path(path) if path is not None else Path()
    for name in CONFIG_FILES:
        candidate = folder / name
        if name == "pyproject.toml" and candidate.is_file():
            if _has_tool_table(candidate):
                return candidate
        elif candidate.is_file():
            return candidate
    where = "the current directory" if path is None else str(folder)
    raise ConfigurationError(
        f"no ratemw configuration in {where}: expected a ratemw.toml, or a [tool.ratemw] "
        "table in pyproject.toml"
    )


def _has_tool_table(path: Path) -> bool:
    try:
        document = _parse(path.read_text("utf-8"), str(path))
    except (OSError, ConfigurationError):
        return True  # let load() report what is wrong with it
    return isinstance(document.get("tool"), dict) and "ratemw" in document["tool"]


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        document: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = _TOML_WHERE.search(message)
        if found is None:
            raise ConfigurationError(f"{source}: invalid TOML: {message}") from None
        where = f"line {found[1]}, column {found[2]}" if found[1] else "end of file"
        raise ConfigurationError(
            f"{source}: {where}: invalid TOML: {message[: found.start()]}"
        ) from None
    return document


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
    found = _find(path)
    source = str(found)
    try:
        text = found.read_text("utf-8")
    except OSError as exc:
        raise ConfigurationError(f"{source}: cannot read the file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{source}: not UTF-8 text: {exc.reason}") from None
    document = _parse(text, source)
    if found.name == "pyproject.toml":
        tool = document.get("tool")
        table = tool.get("ratemw") if isinstance(tool, dict) else None
        if not isinstance(table, dict):
            raise ConfigurationError(f"{source}: no [tool.ratemw] table")
        return _build(table, found, source, "tool.ratemw.", env)
    return _build(document, found, source, "", env)


def loads(
    text: str, *, source: str = "ratemw.toml", env: Mapping[str, str] = os.environ
) -> Config:
    """Build a configuration from TOML text (as ``ratemw.toml`` holds it).

    Example::

        config = loads('default_limits = "100/minute"', env={})
    """
    return _build(_parse(text, source), Path(source), source, "", env)


# -- validating values --------------------------------------------------------------------------


class _Where:
    """Names a value in error messages: ``ratemw.toml: rules[0].limit: ...``."""

    def __init__(self, source: str, prefix: str) -> None:
        self.source = source
        self.prefix = prefix

    def error(self, key: str, message: str) -> ConfigurationError:
        return ConfigurationError(f"{self.source}: {self.prefix}{key}: {message}")

    def unknown(self, table: str, unknown: list[str], valid: list[str]) -> ConfigurationError:
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        what = f"unknown key {unknown[0]!r}" if len(unknown) == 1 else f"unknown keys {unknown!r}"
        where = self.prefix + table if table else self.prefix.rstrip(".")
        head = f"{self.source}: {where}: " if where else f"{self.source}: "
        return ConfigurationError(f"{head}{what}{hint}; valid keys: {', '.join(valid)}")


def _type_name(value: Any) -> str:
    return {
        bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)


def _bad(where: _Where, key: str, value: Any, expected: str) -> ConfigurationError:
    return where.error(key, f"expected {expected}, got {value!r} ({_type_name(value)})")


def _import_object(dotted: str) -> Any:
    """``"package.module:attr"`` or ``"package.module.attr"``."""
    module_name, sep, attrs = dotted.partition(":")
    if not sep:
        module_name, _, attrs = dotted.rpartition(".")
    if not module_name or not attrs:
        raise ValueError("expected an import path such as 'package.module:name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from None
    except Exception as exc:
        raise ValueError(f"importing {module_name!r} raised {exc!r}") from None
    for attr in attrs.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise ValueError(f"{module_name!r} has no attribute {attrs!r}") from None
    return obj


def _callable(where: _Where, key: str, value: Any) -> Any:
    if not isinstance(value, str):
        raise _bad(where, key, value, "an import path such as 'myapp.hooks:on_breach'")
    try:
        obj = _import_object(value)
    except ValueError as exc:
        raise where.error(key, f"{value!r}: {exc}") from None
    if inspect.isclass(obj) or not callable(obj):
        raise where.error(key, f"{value!r} names {obj!r}, which is not a function")
    return obj


def _key(where: _Where, key: str, value: Any) -> Any:
    """A key function: an import path, or ``{type = "client_ip" | "header", ...}``."""
    if isinstance(value, str):
        return _callable(where, key, value)
    if not isinstance(value, dict):
        raise _bad(
            where, key, value,
            "an import path or a table such as { type = \"header\", name = \"X-API-Key\" }",
        )
    options = dict(value)
    kind = options.pop("type", None)
    factory = _KEY_TYPES.get(kind) if isinstance(kind, str) else None
    if factory is None:
        raise where.error(f"{key}.type", f"unknown key type {kind!r}; expected one of "
                          f"{sorted(_KEY_TYPES)}")
    parameters = inspect.signature(factory).parameters
    valid = list(parameters)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise where.unknown(key, unknown, ["type", *valid])
    for name, parameter in parameters.items():
        if parameter.default is inspect.Parameter.empty and name not in options:
            raise where.error(key, f"missing {name!r} (type = {kind!r} needs it)")
    if "fallback" in options:
        options["fallback"] = _key(where, f"{key}.fallback", options["fallback"])
    try:
        return factory(**options)
    except ConfigurationError as exc:
        raise where.error(key, str(exc)) from None
    except TypeError as exc:  # a required argument is missing
        raise where.error(key, f"{kind}: {exc}") from None


def _limits(where: _Where, key: str, value: Any) -> Any:
    if isinstance(value, str) or (
        isinstance(value, list) and value and all(isinstance(v, str) for v in value)
    ):
        return value
    raise _bad(where, key, value, "a limit string such as '100/minute' or a list of them")


def _metrics(where: _Where, key: str, value: Any) -> Any:
    if value == "prometheus":
        from ratemw.metrics import PrometheusMetrics

        try:
            return PrometheusMetrics()
        except (ImportError, ConfigurationError) as exc:
            raise where.error(key, str(exc)) from None
    if not isinstance(value, str):
        raise _bad(where, key, value, "'prometheus' or an import path of a metrics object")
    try:
        obj = _import_object(value)
    except ValueError as exc:
        raise where.error(key, f"{value!r}: {exc}") from None
    if not (hasattr(obj, "observe") and hasattr(obj, "storage_error")) or inspect.isclass(obj):
        raise where.error(
            key, f"{value!r} names {obj!r}, not an object with observe() and storage_error()"
        )
    return obj


def _value(where: _Where, key: str, value: Any) -> Any:
    """Check one top-level value's type and turn import paths into objects."""
    if key in _STRING_KEYS:
        if not isinstance(value, str):
            raise _bad(where, key, value, "a string")
    elif key in _BOOL_KEYS:
        if not isinstance(value, bool):
            raise _bad(where, key, value, "true or false")
    elif key in _NUMBER_KEYS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(where, key, value, "a number")
    elif key in _LIMIT_KEYS:
        return _limits(where, key, value)
    elif key == "headers":
        if not isinstance(value, str | bool) and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise _bad(where, key, value, "a header mode such as 'draft-10', a list, or false")
    elif key in _TABLE_KEYS:
        if not isinstance(value, dict):
            raise _bad(where, key, value, "a table such as { name = value }")
    elif key in _HOOK_KEYS:
        return _callable(where, key, value)
    elif key == "key":
        return _key(where, key, value)
    elif key == "metrics":
        return _metrics(where, key, value)
    return value


def _check(where: _Where, key: str, build: Callable[[], Any]) -> None:
    try:
        build()
    except (ConfigurationError, TypeError) as exc:  # TypeError: a table with unknown keys
        raise where.error(key, str(exc)) from None


# -- rules ------------------------------------------------------------------------------------


def _rule(where: _Where, index: int, table: Any, strategy: str) -> Rule:
    name = f"rules[{index}]"
    if not isinstance(table, dict):
        raise _bad(where, name, table, "a table ([[rules]] with path = ..., limit = ...)")
    unknown = sorted(set(table) - set(_RULE_KEYS))
    if unknown:
        raise where.unknown(name, unknown, list(_RULE_KEYS))
    for required in ("path", "limit"):
        if required not in table:
            raise where.error(name, f"missing {required!r} (a rule needs path and limit)")
    options: dict[str, Any] = {}
    for key, value in table.items():
        options[key] = _rule_value(where, f"{name}.{key}", key, value)
    path, limit = options.pop("path"), options.pop("limit")
    # Check one argument at a time, so that the message names the key that is wrong.
    _check(where, f"{name}.path", lambda: Rule(path, "1/second"))
    _check(where, f"{name}.limit", lambda: Limiter(strategy=strategy, rules=[Rule("/", limit)]))
    for key, value in options.items():
        _check(where, f"{name}.{key}", partial(Rule, "/", limit, **{key: value}))
    try:
        rule = Rule(path, limit, **options)
    except ConfigurationError as exc:
        raise where.error(name, str(exc)) from None
    return rule


def _rule_value(where: _Where, name: str, key: str, value: Any) -> Any:
    if key == "path" and not isinstance(value, str):
        raise _bad(where, name, value, "a path pattern such as '/api/*'")
    if key == "limit":
        limit = _limits(where, name, value)
        return limit if isinstance(limit, str) else ";".join(limit)
    if key == "methods":
        if not isinstance(value, str) and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise _bad(where, name, value, "a list of HTTP methods such as ['GET', 'POST']")
        try:
            normalize_methods(value, "methods")
        except ConfigurationError as exc:
            raise where.error(name, str(exc).removeprefix("methods: ")) from None
    if key in ("per_method", "shadow") and not isinstance(value, bool):
        raise _bad(where, name, value, "true or false")
    if key == "key":
        return _key(where, name, value)
    if key == "cost":
        if isinstance(value, str):
            return _callable(where, name, value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(where, name, value, "a positive integer or an import path")
    if key in ("exempt_when", "deduct_when"):
        return _callable(where, name, value)
    if key == "failure_mode" and value not in FAILURE_MODES:
        raise _bad(where, name, value, f"one of {list(FAILURE_MODES)}")
    return value


# -- the environment --------------------------------------------------------------------------


def _environment(env: Mapping[str, str]) -> tuple[dict[str, Any], tuple[str, ...]]:
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
                f"environment variable {ENV_ENABLED}: expected true, false, 1 or 0, "
                f"got {enabled!r}"
            )
        names.append(ENV_ENABLED)
    return found, tuple(names)


# -- building ---------------------------------------------------------------------------------


def _valid_keys() -> list[str]:
    names = [p for p in inspect.signature(Limiter).parameters if p not in _NOT_FROM_FILES]
    return sorted([*names, "rules"])


def _check_arguments(where: _Where, kwargs: dict[str, Any], from_env: dict[str, Any]) -> str:
    """Build a ``Limiter`` from one argument at a time, so that errors name the key.

    Returns the strategy, which decides whether other values (a burst) are valid.
    """
    strategy: str = kwargs.get("strategy", "fixed-window")
    _check(where, "strategy", partial(Limiter, strategy=strategy))
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
        _check(where, key, partial(Limiter, strategy=strategy, **{key: value}))
    if "storage_options" in kwargs:
        options = kwargs["storage_options"]
        storage = kwargs.get("storage", "memory://")
        _check(where, "storage_options",
               partial(Limiter, storage=storage, storage_options=dict(options)))
    return strategy


def _build(
    table: dict[str, Any], found: Path, source: str, prefix: str, env: Mapping[str, str]
) -> Config:
    where = _Where(source, prefix)
    valid = _valid_keys()
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise where.unknown("", unknown, valid)
    from_env, overrides = _environment(env)
    settings = {**table, **from_env}
    kwargs = {
        key: _value(where, key, value) for key, value in settings.items() if key != "rules"
    }
    strategy = _check_arguments(where, kwargs, from_env)
    raw_rules = settings.get("rules", [])
    if not isinstance(raw_rules, list):
        raise _bad(where, "rules", raw_rules, "an array of tables ([[rules]])")
    rules = tuple(_rule(where, i, r, strategy) for i, r in enumerate(raw_rules))
    if "storage_options" in kwargs:  # the storage takes options out of the dict it is given
        kwargs["storage_options"] = dict(kwargs["storage_options"])
    try:
        limiter = Limiter(rules=rules, **kwargs)
    except ConfigurationError as exc:  # pragma: no cover - every argument was checked above
        raise ConfigurationError(f"{source}: {exc}") from None
    return Config(
        limiter=limiter, rules=rules, source=found, settings=settings, overrides=overrides
    )
