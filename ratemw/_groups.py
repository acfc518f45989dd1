"""Limit groups: one configured set of quotas, wherever it was declared.

A group comes from a decorator, a ``Rule``, the ``Limiter``'s defaults or its application-wide
limits. It knows which quotas apply (fixed, or computed from the request), who is counted, what
a request costs and which bucket the counts go into.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ratemw._exceptions import ConfigurationError
from ratemw._quota import Quota, parse_quotas

HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
# WebSocket handshakes are matched as method "WEBSOCKET" (they have no HTTP method in ASGI).
KNOWN_METHODS = HTTP_METHODS | {"WEBSOCKET"}

FAILURE_MODES = ("allow", "deny", "fallback")
LimitValue = str | Callable[[Any], Any]
CostValue = int | Callable[[Any], Any]


def is_async_callable(fn: Any) -> bool:
    while hasattr(fn, "func"):  # functools.partial
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - instances with an async __call__
    )


def check_callable(value: Any, what: str) -> None:
    if value is not None and not callable(value):
        raise ConfigurationError(f"{what} must be callable, got {value!r}")


def normalize_methods(methods: Iterable[str] | None, what: str) -> frozenset[str] | None:
    if methods is None:
        return None
    if isinstance(methods, str):
        methods = [methods]
    result = frozenset(str(m).upper() for m in methods)
    if not result:
        raise ConfigurationError(f"{what}: methods=[] can never match; omit it to match all")
    unknown = sorted(result - KNOWN_METHODS)
    if unknown:
        raise ConfigurationError(
            f"{what}: unknown HTTP method(s) {unknown!r}; expected some of {sorted(KNOWN_METHODS)}"
        )
    if "GET" in result:
        result |= {"HEAD"}  # HEAD is GET without a body; count it with GET
    return result


@dataclass(frozen=True, eq=False)
class LimitGroup:
    """One declared set of quotas.

    ``kind`` is one of ``route``, ``shared``, ``rule``, ``default``, ``application``;
    ``bucket`` is the scope of the counts (a shared scope, a rule pattern); for ``route`` and
    ``default`` groups the route template is used, so every route counts on its own.
    """

    kind: str
    limit: LimitValue
    bucket: str = ""
    name_prefix: str = ""
    key: Callable[[Any], Any] | None = None
    cost: CostValue = 1
    methods: frozenset[str] | None = None
    per_method: bool = False
    exempt_when: Callable[[Any], Any] | None = None
    override_defaults: bool = True
    shadow: bool | None = None
    deduct_when: Callable[[Any], Any] | None = None
    failure_mode: str | None = None
    quotas: tuple[Quota, ...] | None = field(init=False)

    def __post_init__(self) -> None:
        what = f"{self.kind} limit {self.limit!r}"
        if isinstance(self.limit, str):
            object.__setattr__(self, "quotas", parse_quotas(self.limit))
        elif callable(self.limit):
            object.__setattr__(self, "quotas", None)
        else:
            raise ConfigurationError(
                f"invalid limit {self.limit!r}: expected a string such as '5/minute' or a "
                "callable of the request returning one"
            )
        check_callable(self.key, f"{what}: key")
        check_callable(self.exempt_when, f"{what}: exempt_when")
        check_callable(self.deduct_when, f"{what}: deduct_when")
        if self.failure_mode is not None and self.failure_mode not in FAILURE_MODES:
            raise ConfigurationError(
                f"{what}: unknown failure_mode {self.failure_mode!r}; "
                f"expected one of {list(FAILURE_MODES)}"
            )
        if isinstance(self.cost, bool) or not (
            (isinstance(self.cost, int) and self.cost >= 1) or callable(self.cost)
        ):
            raise ConfigurationError(
                f"{what}: invalid cost {self.cost!r}: expected a positive integer or a callable"
            )
        object.__setattr__(self, "methods", normalize_methods(self.methods, what))

    def applies_to(self, method: str) -> bool:
        return self.methods is None or method in self.methods

    def storage_bucket(self, template: str, method: str) -> str:
        base = self.bucket or template
        scope = f"{self.kind}:{base}"
        return f"{scope}:{method}" if self.per_method else scope


def groups_from(
    kind: str, limits: LimitValue | Iterable[LimitValue] | None, **options: Any
) -> tuple[LimitGroup, ...]:
    """Build groups from one limit or a list of them (strings and/or callables)."""
    if limits is None:
        return ()
    if isinstance(limits, str) or callable(limits):
        limits = [limits]
    try:
        items = list(limits)
    except TypeError:
        raise ConfigurationError(
            f"invalid {kind} limits {limits!r}: expected a string such as '100/minute', a "
            "callable, or a list of them"
        ) from None
    return tuple(LimitGroup(kind=kind, limit=item, **options) for item in items)
