"""Limit groups: one configured set of quotas, wherever it was declared.

A group comes from a decorator, a ``Rule``, the ``Limiter``'s defaults or its application-wide
limits. It knows which quotas apply (fixed, or computed from the request), who is counted, what
a request costs and which bucket the counts go into.
"""

from __future__ import annotations

import inspect
import math
import numbers
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ratemw.errors import ConfigurationError
from ratemw.policy.calendar import Calendar
from ratemw.policy.limits import MAX_AMOUNT, Quota, calendar_quota, parse_quotas

HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
# WebSocket handshakes are matched as method "WEBSOCKET" (they have no HTTP method in ASGI).
KNOWN_METHODS = HTTP_METHODS | {"WEBSOCKET"}

FAILURE_MODES = ("allow", "deny", "fallback")
LimitValue = str | Calendar | Callable[[Any], Any]
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


# -- how a user callable is called ----------------------------------------------------------
#
# Callables normally take the request. Callables written for other limiters keep working:
# flask-limiter's take no argument, and slowapi's limit providers may take the caller's key.

TAKES_REQUEST = "request"
TAKES_NOTHING = "nothing"
TAKES_KEY = "key"


def convention(fn: Any, *, key_allowed: bool = False) -> str:
    """How ``fn`` wants to be called: with the request, with nothing, or with the key."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: give it the request
        return TAKES_REQUEST
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    variadic = any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values())
    if not positional and not variadic:
        return TAKES_NOTHING
    if key_allowed and positional and positional[0].name == "key":
        return TAKES_KEY
    return TAKES_REQUEST


def by_request(fn: Any) -> Any:
    """``fn`` as a callable of the request (a callable of nothing ignores it)."""
    if fn is None or convention(fn) != TAKES_NOTHING:
        return fn
    return _IgnoringRequest(fn)


class _IgnoringRequest:
    """A callable of nothing, called with the request (flask-limiter's convention)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn

    def __call__(self, request: Any) -> Any:
        return self.fn()

    def __repr__(self) -> str:
        return repr(self.fn)


# -- what callables return -------------------------------------------------------------------


def valid_cost(value: Any) -> int | None:
    """A cost a callable returned, as a whole number >= 1; ``None`` if it is not one.

    Integers (not booleans) and integral floats are costs; anything else (a string, a
    fraction, NaN, infinity, zero, a negative number) is not.
    """
    if isinstance(value, bool):
        return None
    whole = isinstance(value, numbers.Integral) or (
        isinstance(value, float) and math.isfinite(value) and value.is_integer()
    )
    if not whole:
        return None
    cost = int(value)
    return cost if cost >= 1 else None


def valid_identity(value: Any) -> str | None:
    """What a key function returned, as an identity; ``None`` if it names nobody.

    A non-blank string, an integer, non-blank bytes or a UUID. Anything else (``None``, an
    empty string, an object whose ``str()`` could differ per request) names nobody.
    """
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # more digits than Python converts to text: its hex is as unique
            return hex(value)
    if isinstance(value, bytes):
        return value.decode("latin-1") if value.strip() else None
    if isinstance(value, uuid.UUID):
        return str(value)
    return None


def valid_limit(value: Any) -> str | None:
    """A limit a callable returned, as one limit string; ``None`` if it is not one."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return ";".join(value)
    return None


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
    fallback: str | None = None
    error_message: str | Callable[[Any], Any] | None = None
    #: False: over the limit, a request is let through and marked (``ratemw.current``).
    block: bool = True
    quotas: tuple[Quota, ...] | None = field(init=False)
    #: The quotas applied when the limit callable fails (else the limiter's fallback limits).
    fallback_quotas: tuple[Quota, ...] = field(init=False, default=())
    #: How the limit callable is called: ``TAKES_REQUEST``, ``TAKES_NOTHING``, ``TAKES_KEY``.
    limit_takes: str = field(init=False, default=TAKES_REQUEST)

    def __post_init__(self) -> None:
        what = f"{self.kind} limit {self.limit!r}"
        if isinstance(self.limit, str):
            object.__setattr__(self, "quotas", parse_quotas(self.limit))
        elif isinstance(self.limit, Calendar):
            quota = calendar_quota(self.limit.amount, self.limit.period, self.limit.text)
            object.__setattr__(self, "quotas", (quota,))
        elif callable(self.limit):
            object.__setattr__(self, "quotas", None)
            object.__setattr__(self, "limit_takes", convention(self.limit, key_allowed=True))
        else:
            raise ConfigurationError(
                f"invalid limit {self.limit!r}: expected a string such as '5/minute', a "
                "Calendar, or a callable of the request returning a limit string"
            )
        if self.fallback is not None:
            if not isinstance(self.fallback, str):
                raise ConfigurationError(
                    f"{what}: invalid fallback {self.fallback!r}: expected a limit string "
                    "such as '10/minute'"
                )
            try:
                object.__setattr__(self, "fallback_quotas", parse_quotas(self.fallback))
            except ConfigurationError as exc:
                raise ConfigurationError(f"{what}: invalid fallback: {exc}") from None
        check_callable(self.key, f"{what}: key")
        check_callable(self.exempt_when, f"{what}: exempt_when")
        check_callable(self.deduct_when, f"{what}: deduct_when")
        if self.error_message is not None and not (
            isinstance(self.error_message, str) or callable(self.error_message)
        ):
            raise ConfigurationError(
                f"{what}: invalid error_message {self.error_message!r}: expected a string "
                "or a callable of the request returning one"
            )
        for name in ("key", "exempt_when", "deduct_when", "error_message"):
            value = getattr(self, name)
            if callable(value):
                object.__setattr__(self, name, by_request(value))
        if callable(self.cost):
            object.__setattr__(self, "cost", by_request(self.cost))
        if self.failure_mode is not None and self.failure_mode not in FAILURE_MODES:
            raise ConfigurationError(
                f"{what}: unknown failure_mode {self.failure_mode!r}; "
                f"expected one of {list(FAILURE_MODES)}"
            )
        if isinstance(self.cost, bool) or not (
            (isinstance(self.cost, int) and 1 <= self.cost <= MAX_AMOUNT) or callable(self.cost)
        ):
            raise ConfigurationError(
                f"{what}: invalid cost {self.cost!r}: expected a whole number from 1 to "
                f"{MAX_AMOUNT}, or a callable of the request returning one"
            )
        object.__setattr__(self, "methods", normalize_methods(self.methods, what))
        if not isinstance(self.block, bool):
            raise ConfigurationError(
                f"{what}: invalid block {self.block!r}: expected True or False"
            )

    def applies_to(self, method: str) -> bool:
        return self.methods is None or method in self.methods

    @property
    def signature(self) -> tuple[Any, ...]:
        """What the group counts by, for keeping what is compiled from it."""
        return (self.kind, self.limit, self.bucket, self.name_prefix, self.key, self.cost,
                self.block, self.shadow, self.failure_mode)  # fmt: skip

    def storage_bucket(self, template: str, method: str) -> str:
        base = self.bucket or template
        scope = f"{self.kind}:{base}"
        if not self.per_method:
            return scope
        # HEAD is GET without a body: counted together, or alternating them doubles a quota.
        return f"{scope}:{'GET' if method == 'HEAD' else method}"


def groups_from(
    kind: str, limits: LimitValue | Iterable[LimitValue] | None, **options: Any
) -> tuple[LimitGroup, ...]:
    """Build groups from one limit or a list of them (strings and/or callables)."""
    if limits is None:
        return ()
    if isinstance(limits, str | Calendar) or callable(limits):
        limits = [limits]
    try:
        items = list(limits)
    except TypeError:
        raise ConfigurationError(
            f"invalid {kind} limits {limits!r}: expected a string such as '100/minute', a "
            "callable, or a list of them"
        ) from None
    return tuple(LimitGroup(kind=kind, limit=item, **options) for item in items)
