"""Checking a configuration file's values, and turning import paths into objects.

Every error names the file, the key and the bad value, and says what would be valid.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import ratemw.keys as keys
from ratemw.errors import ConfigurationError

__all__ = ["Where", "bad", "check", "import_callable", "key_function", "limit_strings", "setting"]

_LIMIT_KEYS = frozenset({"default_limits", "application_limits"})
_HOOK_KEYS = frozenset({"on_breach", "on_near_limit", "on_storage_error"})
_STRING_KEYS = frozenset({"storage", "strategy", "failure_mode", "key_prefix"})
_BOOL_KEYS = frozenset({"shadow", "enabled"})
_NUMBER_KEYS = frozenset({"near_limit_ratio", "concurrency_timeout"})
_TABLE_KEYS = frozenset({"storage_options", "breaker"})
_KEY_TYPES: dict[str, Callable[..., Any]] = {"client_ip": keys.client_ip, "header": keys.header}


class Where:
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
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)


def bad(where: Where, key: str, value: Any, expected: str) -> ConfigurationError:
    """The error for a value of the wrong type: what was expected, what was found."""
    return where.error(key, f"expected {expected}, got {value!r} ({_type_name(value)})")


def check(where: Where, key: str, build: Callable[[], Any]) -> None:
    """Call ``build``; an error it raises is re-raised naming ``key``."""
    try:
        build()
    except (ConfigurationError, TypeError) as exc:  # TypeError: a table with unknown keys
        raise where.error(key, str(exc)) from None


# -- import paths ---------------------------------------------------------------------------


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


def _imported(where: Where, key: str, value: Any, expected: str) -> Any:
    """The object the import path ``value`` names; a setting's error if it names none."""
    if not isinstance(value, str):
        raise bad(where, key, value, expected)
    try:
        return _import_object(value)
    except ValueError as exc:
        raise where.error(key, f"{value!r}: {exc}") from None


def import_callable(where: Where, key: str, value: Any) -> Any:
    """The function ``value`` names by import path (a hook, a cost, a key function)."""
    obj = _imported(where, key, value, "an import path such as 'myapp.hooks:on_breach'")
    if inspect.isclass(obj) or not callable(obj):
        raise where.error(key, f"{value!r} names {obj!r}, which is not a function")
    return obj


def key_function(where: Where, key: str, value: Any) -> Any:
    """A key function: an import path, or ``{type = "client_ip" | "header", ...}``."""
    if isinstance(value, str):
        return import_callable(where, key, value)
    if not isinstance(value, dict):
        raise bad(
            where,
            key,
            value,
            'an import path or a table such as { type = "header", name = "X-API-Key" }',
        )
    return _key_from_table(where, key, value)


def _key_from_table(where: Where, key: str, value: dict[str, Any]) -> Any:
    """A key function of ``ratemw.keys``, built from its ``type`` and its arguments."""
    options = dict(value)
    kind = options.pop("type", None)
    factory = _KEY_TYPES.get(kind) if isinstance(kind, str) else None
    if factory is None:
        raise where.error(
            f"{key}.type", f"unknown key type {kind!r}; expected one of {sorted(_KEY_TYPES)}"
        )
    parameters = inspect.signature(factory).parameters
    valid = list(parameters)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise where.unknown(key, unknown, ["type", *valid])
    for name, parameter in parameters.items():
        if parameter.default is inspect.Parameter.empty and name not in options:
            raise where.error(key, f"missing {name!r} (type = {kind!r} needs it)")
    if "fallback" in options:
        options["fallback"] = key_function(where, f"{key}.fallback", options["fallback"])
    try:
        return factory(**options)
    except ConfigurationError as exc:
        raise where.error(key, str(exc)) from None
    except TypeError as exc:  # a required argument is missing
        raise where.error(key, f"{kind}: {exc}") from None


def _metrics(where: Where, key: str, value: Any) -> Any:
    if value == "prometheus":
        from ratemw.metrics import PrometheusMetrics

        try:
            return PrometheusMetrics()
        except (ImportError, ConfigurationError) as exc:
            raise where.error(key, str(exc)) from None
    obj = _imported(where, key, value, "'prometheus' or an import path of a metrics object")
    if not (hasattr(obj, "observe") and hasattr(obj, "storage_error")) or inspect.isclass(obj):
        raise where.error(
            key, f"{value!r} names {obj!r}, not an object with observe() and storage_error()"
        )
    return obj


# -- values -----------------------------------------------------------------------------------


def limit_strings(where: Where, key: str, value: Any) -> Any:
    """A limit string such as ``"100/minute"``, or a non-empty list of them."""
    if isinstance(value, str) or (
        isinstance(value, list) and value and all(isinstance(v, str) for v in value)
    ):
        return value
    raise bad(where, key, value, "a limit string such as '100/minute' or a list of them")


def setting(where: Where, key: str, value: Any) -> Any:
    """Check one top-level value's type and turn import paths into objects."""
    if key in _STRING_KEYS:
        if not isinstance(value, str):
            raise bad(where, key, value, "a string")
    elif key in _BOOL_KEYS:
        if not isinstance(value, bool):
            raise bad(where, key, value, "true or false")
    elif key in _NUMBER_KEYS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad(where, key, value, "a number")
    elif key in _LIMIT_KEYS:
        return limit_strings(where, key, value)
    elif key == "headers":
        if not isinstance(value, str | bool) and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise bad(where, key, value, "a header mode such as 'draft-10', a list, or false")
    elif key in _TABLE_KEYS:
        if not isinstance(value, dict):
            raise bad(where, key, value, "a table such as { name = value }")
    elif key in _HOOK_KEYS:
        return import_callable(where, key, value)
    elif key == "key":
        return key_function(where, key, value)
    elif key == "metrics":
        return _metrics(where, key, value)
    return value
