"""What an engine is built from: a limiter's settings, checked, as one frozen value.

The ``Limiter`` validates its keyword arguments and turns them into ``Settings``; an
``Engine`` is built from them and never sees the ``Limiter`` itself. Changing a setting means
building new ``Settings`` and a new engine (``Limiter.reconfigure``): nothing changes under a
running engine's feet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from ratemw._clock import wall_clock_ms
from ratemw.errors import ConfigurationError
from ratemw.keys import client_ip
from ratemw.policy.decision import Decision
from ratemw.policy.groups import FAILURE_MODES, LimitGroup, by_request, check_callable, groups_from
from ratemw.policy.headers import HEADER_MODES
from ratemw.policy.limits import Quota, parse_limit_list, strategy_problem
from ratemw.policy.rules import ExemptPath, Rule, exempt_paths
from ratemw.policy.rules import check_rules as checked_rules
from ratemw.storage.base import CONCURRENCY
from ratemw.storage.strategies import STRATEGY_IMPLEMENTATIONS

__all__ = ["Metrics", "Settings", "build_settings", "check_groups", "check_rules", "header_modes"]


class Metrics(Protocol):
    """What the limiter reports to a metrics collector."""

    def observe(self, route: str, decision: Decision, seconds: float) -> None:
        """One decided request: its route template, the decision and how long it took."""

    def storage_error(self) -> None:
        """The storage failed once."""


Hook = Callable[..., Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """A limiter's checked settings (see ``Limiter`` for what each means)."""

    strategy: str
    key: Callable[[Any], Any]
    header_modes: tuple[str, ...]
    failure_mode: str
    shadow: bool
    enabled: bool
    on_breach: Hook | None
    on_near_limit: Hook | None
    on_storage_error: Hook | None
    metrics: Metrics | None
    near_limit_permille: int
    clock_ms: Callable[[], int]
    concurrency_timeout_ms: int
    key_prefix: str
    default_groups: tuple[LimitGroup, ...]
    application_groups: tuple[LimitGroup, ...]
    fallback_quotas: tuple[Quota, ...]
    rules: tuple[Rule, ...]
    request_filters: tuple[Callable[[Any], Any], ...]
    storage_name: str  # the storage URI, passwords hidden: for messages
    count_preflight: bool = False
    exempt_paths: tuple[ExemptPath, ...] = ()  # paths no limit applies to (health probes)

    @property
    def key_head(self) -> str:
        """What every storage key starts with, up to the caller's digest (a cluster hash tag)."""
        return self.key_prefix + ":{"

    @property
    def reports_admissions(self) -> bool:
        """Whether an admitted request is reported beyond its headers (a hook, metrics, a
        header mode other than draft-10, request filters or shadow limits to evaluate)."""
        return not (
            self.on_near_limit is None
            and self.metrics is None
            and not self.request_filters
            and not self.shadow
            and (not self.header_modes or self.header_modes == ("draft-10",))
        )


# -- checking what a Limiter is given -----------------------------------------------------------


def header_modes(headers: Any) -> tuple[str, ...]:
    """``headers=`` as a tuple of header modes (``False``/``None``: none)."""
    if headers is None or headers is False:
        return ()
    if headers is True:
        return ("draft-10",)
    modes = (headers,) if isinstance(headers, str) else tuple(headers)
    for mode in modes:
        if mode not in HEADER_MODES:
            raise ConfigurationError(
                f"unknown headers mode {mode!r}; expected one of {list(HEADER_MODES)}, "
                "a list of them, or False for none"
            )
    return modes


def check_groups(
    groups: tuple[LimitGroup, ...], strategy: str, fallback_quotas: tuple[Quota, ...]
) -> tuple[LimitGroup, ...]:
    """Refuse quotas ``strategy`` cannot count (a burst needs GCRA), and limit callables with
    nothing to fall back on."""
    for group in groups:
        for quota in (*(group.quotas or ()), *group.fallback_quotas):
            problem = strategy_problem(quota, strategy)
            if problem is not None:
                raise ConfigurationError(f"limit {group.limit!r} {problem}")
        if group.quotas is None and not (group.fallback_quotas or fallback_quotas):
            raise ConfigurationError(
                f"limit callable {group.limit!r} has no fallback: pass fallback= (e.g. "
                "fallback='60/minute'), or give the Limiter fallback_limits= or static "
                "default_limits=, so that a callable that fails never leaves the route "
                "unlimited"
            )
    return groups


def check_rules(rules: Iterable[Any], settings: Settings) -> tuple[Rule, ...]:
    """``rules`` as ``Rule``s whose limits ``settings``' strategy can count."""
    checked = checked_rules(rules)
    for rule in checked:
        check_groups(rule.groups, settings.strategy, settings.fallback_quotas)
    return checked


def _fallback_quotas(
    fallback_limits: str | Iterable[str] | None, default: tuple[LimitGroup, ...]
) -> tuple[Quota, ...]:
    """The limiter's fallback limits: ``fallback_limits``, else its static default limits."""
    if fallback_limits is None:
        return tuple(quota for group in default for quota in group.quotas or ())
    if not isinstance(fallback_limits, str | list | tuple):
        raise ConfigurationError(
            f"invalid fallback_limits {fallback_limits!r}: expected a limit string such as "
            "'60/minute', or a list of them"
        )
    return parse_limit_list(fallback_limits, what="fallback_limits")


def _check_numbers(arguments: dict[str, Any]) -> None:
    strategy = arguments["strategy"]
    if strategy not in STRATEGY_IMPLEMENTATIONS or strategy == CONCURRENCY:
        known = [s for s in STRATEGY_IMPLEMENTATIONS if s != CONCURRENCY]
        raise ConfigurationError(f"unknown strategy {strategy!r}; expected one of {known}")
    timeout = arguments["concurrency_timeout"]
    if isinstance(timeout, bool) or not (isinstance(timeout, int | float) and timeout > 0):
        raise ConfigurationError(f"invalid concurrency_timeout {timeout!r}: expected seconds > 0")
    if arguments["failure_mode"] not in FAILURE_MODES:
        raise ConfigurationError(
            f"unknown failure_mode {arguments['failure_mode']!r}; expected one of "
            f"{list(FAILURE_MODES)}"
        )
    prefix = arguments["key_prefix"]
    if not isinstance(prefix, str) or not prefix or "{" in prefix:
        raise ConfigurationError(
            f"invalid key_prefix {prefix!r}: expected a non-empty string without braces"
        )
    ratio = arguments["near_limit_ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not (0 < ratio <= 1):
        raise ConfigurationError(f"invalid near_limit_ratio {ratio!r}: expected a number in (0, 1]")
    for name in ("key", "on_breach", "on_near_limit", "on_storage_error", "clock"):
        check_callable(arguments[name], name)


def build_settings(
    arguments: dict[str, Any],
    *,
    storage_name: str,
    request_filters: tuple[Callable[[Any], Any], ...] = (),
) -> Settings:
    """Check a ``Limiter``'s keyword ``arguments`` and turn them into ``Settings``.

    Raises ``ConfigurationError`` naming the first bad value.
    """
    _check_numbers(arguments)
    strategy = arguments["strategy"]
    default = groups_from("default", arguments["default_limits"])
    fallback_quotas = _fallback_quotas(arguments["fallback_limits"], default)
    application = groups_from(
        "application", arguments["application_limits"], bucket="*", name_prefix="app-"
    )
    settings = Settings(
        strategy=strategy,
        key=by_request(arguments["key"]) or client_ip(),
        header_modes=header_modes(arguments["headers"]),
        failure_mode=arguments["failure_mode"],
        shadow=bool(arguments["shadow"]),
        enabled=bool(arguments["enabled"]),
        on_breach=arguments["on_breach"],
        on_near_limit=arguments["on_near_limit"],
        on_storage_error=arguments["on_storage_error"],
        metrics=arguments["metrics"],
        near_limit_permille=round(arguments["near_limit_ratio"] * 1000),
        clock_ms=arguments["clock"] or wall_clock_ms,
        concurrency_timeout_ms=round(arguments["concurrency_timeout"] * 1000),
        key_prefix=arguments["key_prefix"],
        default_groups=check_groups(default, strategy, fallback_quotas),
        application_groups=check_groups(application, strategy, fallback_quotas),
        fallback_quotas=fallback_quotas,
        rules=(),
        request_filters=request_filters,
        storage_name=storage_name,
        count_preflight=_flag(arguments["count_preflight"], "count_preflight"),
        exempt_paths=exempt_paths(arguments["exempt_paths"]),
    )
    return replace(settings, rules=check_rules(arguments["rules"], settings))


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"invalid {name} {value!r}: expected True or False")
    return value
