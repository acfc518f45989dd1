"""A configuration file's ``[[rules]]`` tables, checked and turned into ``Rule`` objects."""

from __future__ import annotations

from functools import partial
from typing import Any

from ratemw.config.values import (
    Where,
    bad,
    check,
    import_callable,
    key_function,
    limit_strings,
)
from ratemw.errors import ConfigurationError
from ratemw.limiter import Limiter
from ratemw.policy.groups import FAILURE_MODES, normalize_methods
from ratemw.policy.rules import Rule

__all__ = ["build_rules"]

_RULE_KEYS = (
    "path",
    "limit",
    "methods",
    "per_method",
    "shadow",
    "key",
    "cost",
    "exempt_when",
    "deduct_when",
    "failure_mode",
    "block",
)


def build_rules(where: Where, raw_rules: Any, strategy: str) -> tuple[Rule, ...]:
    """The ``Rule`` of each table of ``raw_rules``; ``strategy`` decides which limits are valid."""
    if not isinstance(raw_rules, list):
        raise bad(where, "rules", raw_rules, "an array of tables ([[rules]])")
    return tuple(_rule(where, i, r, strategy) for i, r in enumerate(raw_rules))


def _rule(where: Where, index: int, table: Any, strategy: str) -> Rule:
    name = f"rules[{index}]"
    if not isinstance(table, dict):
        raise bad(where, name, table, "a table ([[rules]] with path = ..., limit = ...)")
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
    check(where, f"{name}.path", lambda: Rule(path, "1/second"))
    check(where, f"{name}.limit", lambda: Limiter(strategy=strategy, rules=[Rule("/", limit)]))
    for key, value in options.items():
        check(where, f"{name}.{key}", partial(Rule, "/", limit, **{key: value}))
    try:
        rule = Rule(path, limit, **options)
    except ConfigurationError as exc:
        raise where.error(name, str(exc)) from None
    return rule


def _rule_value(where: Where, name: str, key: str, value: Any) -> Any:
    """Check one value of a rule's table and turn import paths into objects."""
    if key == "path" and not isinstance(value, str):
        raise bad(where, name, value, "a path pattern such as '/api/*'")
    if key == "limit":
        limit = limit_strings(where, name, value)
        return limit if isinstance(limit, str) else ";".join(limit)
    if key == "methods":
        _check_methods(where, name, value)
    if key in ("per_method", "shadow", "block") and not isinstance(value, bool):
        raise bad(where, name, value, "true or false")
    if key == "key":
        return key_function(where, name, value)
    if key == "cost":
        if isinstance(value, str):
            return import_callable(where, name, value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(where, name, value, "a positive integer or an import path")
    if key in ("exempt_when", "deduct_when"):
        return import_callable(where, name, value)
    if key == "failure_mode" and value not in FAILURE_MODES:
        raise bad(where, name, value, f"one of {list(FAILURE_MODES)}")
    return value


def _check_methods(where: Where, name: str, value: Any) -> None:
    if not isinstance(value, str) and not (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    ):
        raise bad(where, name, value, "a list of HTTP methods such as ['GET', 'POST']")
    try:
        normalize_methods(value, "methods")
    except ConfigurationError as exc:
        raise where.error(name, str(exc).removeprefix("methods: ")) from None
