"""Route rules: limits declared in configuration for code you do not own."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from ratemw._exceptions import ConfigurationError
from ratemw._groups import CostValue, LimitGroup, LimitValue, groups_from


def _compile(pattern: str) -> re.Pattern[str]:
    if not isinstance(pattern, str) or not pattern.startswith("/"):
        raise ConfigurationError(
            f"rule path {pattern!r} can never match: request paths start with '/' "
            "(e.g. '/api/*')"
        )
    if any(ch.isspace() for ch in pattern):
        raise ConfigurationError(f"rule path {pattern!r} can never match: it contains white space")
    # '*' matches any run of characters, '/' included; everything else is literal.
    parts = re.split(r"(\*)", pattern)
    # DOTALL: a decoded "%0A" in a path must not slip past a '*'.
    pattern_text = "".join(".*" if part == "*" else re.escape(part) for part in parts) + r"\Z"
    return re.compile(pattern_text, re.DOTALL)


class Rule:
    """A limit on every request whose path matches ``path`` (and method is in ``methods``).

    ``*`` in ``path`` matches anything, ``/`` included: ``"/api/*"`` covers ``/api/users`` and
    ``/api/v1/items/3``. All requests matching a rule share its counts (per key).

    Example::

        RateLimitMiddleware(app, limiter=limiter, rules=[
            Rule("/static/*", "300/minute"),
            Rule("/api/*", "100/minute", methods=["POST"]),
        ])

    Args:
        path: the path pattern.
        limit: a limit string (``"100/minute;1000/hour"``) or a callable of the request.
        methods: HTTP methods the rule applies to (all when omitted); ``"WEBSOCKET"`` matches
            WebSocket handshakes.
        key, cost, per_method, exempt_when, shadow, deduct_when, failure_mode: as for
            ``Limiter.limit``.
    """

    def __init__(
        self,
        path: str,
        limit: LimitValue,
        *,
        methods: Iterable[str] | None = None,
        key: Callable[[Any], Any] | None = None,
        cost: CostValue = 1,
        per_method: bool = False,
        exempt_when: Callable[[Any], Any] | None = None,
        shadow: bool | None = None,
        deduct_when: Callable[[Any], Any] | None = None,
        failure_mode: str | None = None,
    ) -> None:
        self.path = path
        self._regex = _compile(path)
        self.groups = groups_from(
            "rule",
            limit,
            bucket=path,
            key=key,
            cost=cost,
            methods=methods,
            per_method=per_method,
            exempt_when=exempt_when,
            shadow=shadow,
            deduct_when=deduct_when,
            failure_mode=failure_mode,
        )
        self.limit = limit
        self.methods = self.groups[0].methods if self.groups else None

    def __repr__(self) -> str:
        methods = sorted(self.methods) if self.methods else None
        return f"Rule({self.path!r}, {self.limit!r}, methods={methods!r})"

    def matches(self, path: str) -> bool:
        return self._regex.match(path) is not None


def check_rules(rules: Iterable[Any]) -> tuple[Rule, ...]:
    result = tuple(rules)
    for rule in result:
        if not isinstance(rule, Rule):
            raise ConfigurationError(f"rules must be ratemw.Rule objects, got {rule!r}")
    return result


def rule_groups(rules: tuple[Rule, ...], path: str) -> list[LimitGroup]:
    groups: list[LimitGroup] = []
    for rule in rules:
        if rule.matches(path):
            groups.extend(rule.groups)
    return groups
