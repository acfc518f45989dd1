"""The ``Limiter``: configuration, the route decorators and the storage it counts in."""

from __future__ import annotations

import logging
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from ratemw.engine.breaker import CircuitBreaker
from ratemw.engine.decide import KeptBatches, KeyHasher
from ratemw.policy.decision import HEADER_MODES, Decision
from ratemw.errors import ConfigurationError
from ratemw.policy.groups import (
    FAILURE_MODES,
    CostValue,
    LimitGroup,
    LimitValue,
    by_request,
    check_callable,
    groups_from,
)
from ratemw.engine.plans import Plan, compile_plan
from ratemw.policy.limits import Quota, parse_limit_list, strategy_problem
from ratemw._redact import redact_uri
from ratemw.engine.reporting import FailureLog
from ratemw.policy.rules import Rule, check_rules, rule_groups
from ratemw.keys import client_ip
from ratemw.storage import StorageBackends
from ratemw.storage._base import CONCURRENCY, STRATEGIES
from ratemw.storage._strategies import STRATEGY_IMPLEMENTATIONS
from ratemw.storage.memory import wall_clock_ms

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

logger = logging.getLogger("ratemw")



class Metrics(Protocol):
    """What the limiter reports to a metrics collector."""

    def observe(self, route: str, decision: Decision, seconds: float) -> None:
        """One decided request: its route template, the decision and how long it took."""

    def storage_error(self) -> None:
        """The storage failed once."""
NO_ROUTE = "<no route>"


def _header_modes(headers: Any) -> tuple[str, ...]:
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


# Settings that plans and kept hits are compiled from, and that may be changed on a limiter
# in use (see Limiter.watch_plans). The storage, strategy and key prefix may not.
_PLANNED = frozenset({
    "key", "shadow", "header_modes", "metrics", "on_breach", "on_near_limit", "on_storage_error",
    "default_groups", "application_groups", "rules",
})


class Limiter:
    """Rate limits for an app: where counts are kept, who is counted, and the limits.

    One ``Limiter`` serves ASGI apps (through ``RateLimitMiddleware``, on async storage) and
    WSGI apps (through ``WSGIRateLimitMiddleware``, on sync storage) from one storage URI.

    Example::

        limiter = Limiter(default_limits="100/minute", key=keys.client_ip())
        app.add_middleware(RateLimitMiddleware, limiter=limiter)

        @app.get("/search")
        @limiter.limit("5/minute;100/hour")
        async def search(q: str): ...

    Args:
        storage: a storage URI: ``memory://`` (default), ``redis://host:6379``, ``rediss://``,
            ``redis+unix://``, ``redis+cluster://``, ``redis+sentinel://``, ``valkey://``.
        strategy: ``"fixed-window"`` (default), ``"moving-window"``,
            ``"sliding-window-counter"``, ``"gcra"`` (token bucket; limits may add a burst:
            ``"10/second burst 20"``), or the name of a strategy you registered.
        default_limits: limits for every route without a limit of its own (counted per route).
        application_limits: limits on every request, counted across all routes.
        key: the key function: who is counted (default ``keys.client_ip()``). When a key
            function raises, the request is counted by client address as this key's
            ``client_ip`` (its ``fallback``'s) resolves it, else as ``keys.client_ip()``
            does; the failure is logged once per incident (first with its traceback, then
            at most a line a minute with the count of failures not logged).
        headers: ``"draft-10"`` (default: ``RateLimit-Policy`` and ``RateLimit``),
            ``"draft-7"``, ``"draft-6"``, ``"legacy"`` (``X-RateLimit-*``), a list of these, or
            ``False`` to send none on successful responses (429s still carry ``Retry-After``).
        failure_mode: when storage fails: ``"allow"`` (default), ``"deny"`` (503) or
            ``"fallback"`` (per-process in-memory limits).
        shadow: evaluate and report limits without refusing anything.
        enabled: ``False`` turns every limit off (the middleware passes requests through).
        on_breach: ``hook(request, RateLimitExceeded)`` when a request is refused (or would be,
            for shadow limits: then ``exc.shadow`` is true).
        on_near_limit: ``hook(request, PolicyState)`` when a request takes a policy's usage
            past ``near_limit_ratio`` of its quota.
        on_storage_error: ``hook(request, StorageError)`` when storage fails.
        rules: ``Rule`` objects applied by every middleware using this limiter.
        key_prefix: prefix of every storage key, so several apps can share one Redis.
        storage_options: extra options for the storage (``max_keys`` for memory; connection
            options for Redis).
        near_limit_ratio: the share of a quota at which ``on_near_limit`` fires (default 0.8).
        clock: a callable returning the time in integer milliseconds (for tests:
            ``ratemw.testing.FakeClock``); used by the memory storage and for epoch headers.
        concurrency_timeout: seconds after which a concurrency slot (``"5 concurrent"``)
            that was never released (a crashed worker) lapses.
        breaker: circuit breaker settings: ``threshold`` (consecutive failures that open it,
            default 3), ``backoff`` (seconds it first stays open, 0.5), ``max_backoff`` (2).
        metrics: an object with ``observe(route, decision, seconds)`` and ``storage_error()``,
            such as ``ratemw.metrics.PrometheusMetrics()``.
    """

    def __init__(
        self,
        *,
        storage: str = "memory://",
        strategy: str = "fixed-window",
        default_limits: LimitValue | Iterable[LimitValue] | None = None,
        application_limits: LimitValue | Iterable[LimitValue] | None = None,
        key: Callable[[Any], Any] | None = None,
        headers: str | Iterable[str] | bool | None = "draft-10",
        failure_mode: str = "allow",
        shadow: bool = False,
        enabled: bool = True,
        on_breach: Callable[..., Any] | None = None,
        on_near_limit: Callable[..., Any] | None = None,
        on_storage_error: Callable[..., Any] | None = None,
        rules: Iterable[Rule] = (),
        key_prefix: str = "ratemw",
        storage_options: dict[str, Any] | None = None,
        near_limit_ratio: float = 0.8,
        clock: Callable[[], int] | None = None,
        metrics: Metrics | None = None,
        concurrency_timeout: float = 300.0,
        breaker: dict[str, Any] | None = None,
        fallback_limits: str | Iterable[str] | None = None,
    ) -> None:
        if strategy not in STRATEGY_IMPLEMENTATIONS or strategy == CONCURRENCY:
            known = [s for s in STRATEGY_IMPLEMENTATIONS if s != CONCURRENCY]
            raise ConfigurationError(f"unknown strategy {strategy!r}; expected one of {known}")
        if not (isinstance(concurrency_timeout, int | float) and concurrency_timeout > 0):
            raise ConfigurationError(
                f"invalid concurrency_timeout {concurrency_timeout!r}: expected seconds > 0"
            )
        if failure_mode not in FAILURE_MODES:
            raise ConfigurationError(
                f"unknown failure_mode {failure_mode!r}; expected one of {list(FAILURE_MODES)}"
            )
        if not isinstance(key_prefix, str) or not key_prefix or "{" in key_prefix:
            raise ConfigurationError(
                f"invalid key_prefix {key_prefix!r}: expected a non-empty string without braces"
            )
        if not (0 < near_limit_ratio <= 1):
            raise ConfigurationError(
                f"invalid near_limit_ratio {near_limit_ratio!r}: expected a number in (0, 1]"
            )
        for name, hook in (
            ("key", key),
            ("on_breach", on_breach),
            ("on_near_limit", on_near_limit),
            ("on_storage_error", on_storage_error),
            ("clock", clock),
        ):
            check_callable(hook, name)
        self.storage_uri = storage
        self.storage_uri_redacted = redact_uri(storage) if isinstance(storage, str) else storage
        self.strategy = strategy
        self.clock_ms: Callable[[], int] = clock or wall_clock_ms
        self.backends = StorageBackends(
            storage, options=storage_options, clock=clock, key_prefix=key_prefix
        )
        if self.backends.scheme != "memory" and not _redis_serves(strategy):
            raise ConfigurationError(
                f"strategy {strategy!r} is not served by {self.backends.scheme!r} storage: "
                f"Redis storages count {list(STRATEGIES)} and strategies of your own that "
                "bring their Lua (a 'lua' attribute)"
            )
        self._fallback: StorageBackends | None = None
        self.key: Callable[[Any], Any] = by_request(key) or client_ip()
        self.header_modes = _header_modes(headers)
        self.failure_mode = failure_mode
        self.shadow = bool(shadow)
        self.enabled = bool(enabled)
        self.on_breach = on_breach
        self.on_near_limit = on_near_limit
        self.on_storage_error = on_storage_error
        self.key_prefix = key_prefix
        self.key_head = key_prefix + ":{"  # storage keys: prefix:{digest}:bucket:...
        self.metrics = metrics
        self.concurrency_timeout_ms = round(concurrency_timeout * 1000)
        self.instance_id = uuid.uuid4().hex[:12]
        self.near_limit_ratio_permille = round(near_limit_ratio * 1000)
        self.request_filters: tuple[Callable[[Any], Any], ...] = ()
        default = groups_from("default", default_limits)
        self.fallback_quotas = _fallback_quotas(fallback_limits, default)
        self.default_groups = self._check_groups(default)
        self.application_groups = self._check_groups(
            groups_from("application", application_limits, bucket="*", name_prefix="app-")
        )
        self.rules = self.check_rules(rules)
        self.hash_key = KeyHasher()
        self.batches = KeptBatches()
        self.failures = FailureLog(clock or _monotonic_ms)
        # Declarations by the id of what was decorated (which need not be hashable), each
        # with the object itself, kept alive so that its id is never reused.
        self._endpoint_groups: dict[int, tuple[Any, tuple[LimitGroup, ...]]] = {}
        self._exempt: dict[int, Any] = {}
        self.breaker = CircuitBreaker(name=self.storage_uri_redacted, **(breaker or {}))
        self.plan_generation = 0  # how many times planned settings changed
        self._plan_caches: list[weakref.ref[Any]] = []  # appended and copied atomically

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "rules":  # validated however they are set, as a tuple
            value = self.check_rules(value)
        super().__setattr__(name, value)
        if name in _PLANNED and "_plan_caches" in self.__dict__:
            self._plans_changed()

    def _plans_changed(self) -> None:
        # Plans and kept hits were compiled from what changed: forget them. A plan compiled
        # meanwhile carries the old generation, so it is not kept either.
        self.plan_generation += 1
        self.batches.kept.clear()
        for ref in list(self._plan_caches):
            cache = ref()
            if cache is not None:
                cache.forget_plans()

    def watch_plans(self, cache: Any) -> None:
        """Have ``cache.forget_plans()`` called when a setting its plans depend on changes.

        Plans (and callers' kept hits) are compiled from the limiter's key, shadow flag,
        header modes, hooks, metrics, rules, default and application limits, and its route
        decorators: setting any of these (or decorating a route) on a limiter in use makes
        the middlewares plan again. A cache keeps a plan only if ``plan.generation`` is still
        ``limiter.plan_generation``.
        """
        alive = [ref for ref in self._plan_caches if ref() is not None]
        self._plan_caches = [*alive, weakref.ref(cache)]

    def __repr__(self) -> str:
        return (
            f"Limiter(storage={self.storage_uri_redacted!r}, strategy={self.strategy!r}, "
            f"enabled={self.enabled!r})"
        )

    # -- decorators ---------------------------------------------------------------------------

    def _check_groups(self, groups: tuple[LimitGroup, ...]) -> tuple[LimitGroup, ...]:
        """Refuse quotas this limiter's strategy cannot count (a burst needs GCRA), and limit
        callables with nothing to fall back on."""
        for group in groups:
            for quota in (*(group.quotas or ()), *group.fallback_quotas):
                problem = strategy_problem(quota, self.strategy)
                if problem is not None:
                    raise ConfigurationError(f"limit {group.limit!r} {problem}")
            if group.quotas is None and not (group.fallback_quotas or self.fallback_quotas):
                raise ConfigurationError(
                    f"limit callable {group.limit!r} has no fallback: pass fallback= (e.g. "
                    "fallback='60/minute'), or give the Limiter fallback_limits= or static "
                    "default_limits=, so that a callable that fails never leaves the route "
                    "unlimited"
                )
        return groups

    def check_rules(self, rules: Iterable[Any]) -> tuple[Rule, ...]:
        """Validate rules for this limiter (also used by the middlewares' ``rules=``)."""
        checked = check_rules(rules)
        for rule in checked:
            self._check_groups(rule.groups)
        return checked

    def _register(self, groups: tuple[LimitGroup, ...]) -> Callable[[F], F]:
        def decorator(endpoint: F) -> F:
            _, known = self._endpoint_groups.get(id(endpoint), (endpoint, ()))
            self._endpoint_groups[id(endpoint)] = (endpoint, known + groups)
            self._plans_changed()  # a route served before it was decorated is planned again
            return endpoint

        return decorator

    def declared(self, target: Any) -> tuple[LimitGroup, ...]:
        """The limit groups declared on ``target`` by ``limit`` and ``shared_limit``."""
        found = self._endpoint_groups.get(id(target))
        return found[1] if found is not None and found[0] is target else ()

    def is_exempt(self, target: Any) -> bool:
        """Whether ``target`` was exempted with ``exempt``."""
        return self._exempt.get(id(target), None) is target and target is not None

    def limit(
        self,
        limit: LimitValue,
        *,
        key: Callable[[Any], Any] | None = None,
        cost: CostValue = 1,
        methods: Iterable[str] | None = None,
        per_method: bool = False,
        exempt_when: Callable[[Any], Any] | None = None,
        override_defaults: bool = True,
        shadow: bool | None = None,
        deduct_when: Callable[[Any], Any] | None = None,
        failure_mode: str | None = None,
        fallback: str | None = None,
        error_message: str | Callable[[Any], Any] | None = None,
    ) -> Callable[[F], F]:
        """Limit one route. The endpoint is returned unchanged: no ``request`` parameter needed.

        Example::

            @app.get("/search")
            @limiter.limit("5/minute;100/hour")
            async def search(q: str): ...

        Args:
            limit: ``"5/minute"``, ``"10 per 5 seconds"``, several joined by ``;``, or a
                callable of the request (sync or async) returning such a string.
            key: who is counted for this limit (default: the limiter's ``key``).
            cost: units each request takes: an integer, or a callable of the request.
            methods: only requests with these methods are limited.
            per_method: count each method separately.
            exempt_when: a callable of the request; when it returns true the limit is skipped.
            override_defaults: when true (default) the limiter's default limits do not apply
                to this route.
            shadow: report but do not enforce this limit (default: the limiter's ``shadow``).
            deduct_when: a callable of the response (``status_code``, ``headers``), sync or
                async; when it returns false the request is refunded once the response is
                over, e.g. ``lambda r: r.status_code < 500`` so server errors do not count.
            failure_mode: what this limit does when storage fails (default: the limiter's).
                When limits of one request disagree, the strictest wins: ``deny``, then
                ``fallback``, then ``allow``.
            fallback: for a limit callable, the limit string applied when it raises or
                returns something that is not a valid limit (default: the limiter's
                ``fallback_limits``).
            error_message: the ``detail`` of the 429 when this limit refuses a request: a
                string, or a callable of the request returning one (slowapi's
                ``error_message``).

        Callables (``limit``, ``key``, ``cost``, ``exempt_when``, ``deduct_when``,
        ``error_message``) may be sync or async, and may take the request or nothing at
        all; a limit callable whose one parameter is named ``key`` gets the caller's
        identity. What each does when it fails is in docs/headers-and-errors.md.
        """
        return self._register(
            self._check_groups(groups_from(
                "route",
                limit,
                key=key,
                cost=cost,
                methods=methods,
                per_method=per_method,
                exempt_when=exempt_when,
                override_defaults=override_defaults,
                shadow=shadow,
                deduct_when=deduct_when,
                failure_mode=failure_mode,
                fallback=fallback,
                error_message=error_message,
            ))
        )

    def shared_limit(
        self,
        limit: LimitValue,
        scope: str,
        *,
        key: Callable[[Any], Any] | None = None,
        cost: CostValue = 1,
        methods: Iterable[str] | None = None,
        per_method: bool = False,
        exempt_when: Callable[[Any], Any] | None = None,
        override_defaults: bool = True,
        shadow: bool | None = None,
        deduct_when: Callable[[Any], Any] | None = None,
        failure_mode: str | None = None,
        fallback: str | None = None,
        error_message: str | Callable[[Any], Any] | None = None,
    ) -> Callable[[F], F]:
        """Limit several routes together: every route decorated with one ``scope`` shares counts.

        Example::

            search_limit = limiter.shared_limit("100/hour", scope="search")

            @app.get("/search/books")
            @search_limit
            async def books(): ...
        """
        if not isinstance(scope, str) or not scope:
            raise ConfigurationError(f"invalid shared_limit scope {scope!r}: expected a name")
        return self._register(
            self._check_groups(groups_from(
                "shared",
                limit,
                bucket=scope,
                name_prefix=f"{scope}-",
                key=key,
                cost=cost,
                methods=methods,
                per_method=per_method,
                exempt_when=exempt_when,
                override_defaults=override_defaults,
                shadow=shadow,
                deduct_when=deduct_when,
                failure_mode=failure_mode,
                fallback=fallback,
                error_message=error_message,
            ))
        )

    def exempt(self, endpoint: F) -> F:
        """Exempt a route from every limit (defaults, application limits and rules included)."""
        self._exempt[id(endpoint)] = endpoint
        self._plans_changed()
        return endpoint

    def request_filter(self, fn: F) -> F:
        """Register a filter: a request for which it returns ``True`` is not limited at all.

        flask-limiter's ``request_filter``. Sync or async, a callable of the request (or of
        nothing). A filter that raises or returns anything but ``True`` or ``False`` does not
        exempt the request (logged once per incident).

        Example::

            @limiter.request_filter
            def internal(request) -> bool:
                return request.headers.get("x-internal-token") == SECRET
        """
        check_callable(fn, "request_filter")
        self.request_filters = (*self.request_filters, by_request(fn))
        self._plans_changed()
        return fn

    # -- planning -----------------------------------------------------------------------------

    def plan(
        self,
        endpoint: Any,
        template: str | None,
        path: str,
        method: str,
        extra_rules: tuple[Rule, ...] = (),
    ) -> Plan:
        """Which limit groups apply to a request on ``endpoint`` at ``path``.

        Declarations are looked for on the endpoint, on what it wraps (``functools.wraps``
        decorators, the class behind an ``as_view()`` function) and on a class's method
        handler. Defaults apply when none of the route's own limits covers ``method``.
        """
        # Read first: a plan compiled while a declaration or setting changes must carry the
        # generation before the change, so that no cache keeps it.
        generation = self.plan_generation
        template = template or NO_ROUTE
        targets = _declaration_targets(endpoint, method)
        if any(self.is_exempt(target) for target in targets):
            return Plan(template, (), generation=generation)
        own = [g for target in targets for g in self.declared(target)]
        own.extend(rule_groups(self.rules + extra_rules, path))
        own = [g for g in own if g.applies_to(method)]
        groups = own
        if not own or any(not g.override_defaults for g in own):
            groups = groups + list(self.default_groups)
        groups.extend(self.application_groups)
        return compile_plan(self, template, groups, method, generation)

    @property
    def has_hooks(self) -> bool:
        return bool(self.on_breach or self.on_near_limit or self.on_storage_error)

    @property
    def fast_reporting(self) -> bool:
        """Admitted requests need no hooks, metrics or header mode beyond draft-10."""
        return (
            self.on_near_limit is None
            and self.metrics is None
            and not self.request_filters
            and not self.shadow
            and (not self.header_modes or self.header_modes == ("draft-10",))
        )

    # -- storage ------------------------------------------------------------------------------

    @property
    def fallback_storage(self) -> StorageBackends:
        if self._fallback is None:
            self._fallback = StorageBackends("memory://", clock=self.clock_ms)
        return self._fallback

    def reset(self) -> None:
        """Forget every count (sync storage; for tests and admin tasks)."""
        self.backends.sync.reset()
        if self._fallback is not None:
            self._fallback.sync.reset()

    async def areset(self) -> None:
        """Forget every count (async storage)."""
        await self.backends.async_.reset()
        if self._fallback is not None:
            await self._fallback.async_.reset()


_MAX_UNWRAP = 16


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def _fallback_quotas(
    fallback_limits: str | Iterable[str] | None, default: tuple[LimitGroup, ...]
) -> tuple[Quota, ...]:
    """The limiter's fallback limits: ``fallback_limits``, else its static default limits."""
    if fallback_limits is not None:
        if not isinstance(fallback_limits, str | list | tuple):
            raise ConfigurationError(
                f"invalid fallback_limits {fallback_limits!r}: expected a limit string such "
                "as '60/minute', or a list of them"
            )
        return parse_limit_list(fallback_limits, what="fallback_limits")
    return tuple(quota for group in default for quota in group.quotas or ())


def _redis_serves(strategy: str) -> bool:
    from ratemw.storage.redis import serves

    return serves(strategy)


def _declaration_targets(endpoint: Any, method: str) -> list[Any]:
    """The endpoint, what it wraps, and the method handlers of classes among them."""
    if endpoint is None:
        return []
    targets: list[Any] = []
    seen: set[int] = set()
    current = endpoint
    while current is not None and id(current) not in seen and len(seen) < _MAX_UNWRAP:
        seen.add(id(current))
        targets.append(current)
        view_class = getattr(current, "view_class", None)
        if isinstance(view_class, type):
            targets.append(view_class)
        current = getattr(current, "__wrapped__", None)
    handlers = [_method_handler(t, method) for t in targets if isinstance(t, type)]
    return targets + [h for h in handlers if h not in targets]


def _method_handler(endpoint: Any, method: str) -> Any:
    """For class-based endpoints, the method that handles ``method`` (``get`` for ``HEAD``)."""
    if isinstance(endpoint, type):
        name = "get" if method == "HEAD" and not hasattr(endpoint, "head") else method.lower()
        return getattr(endpoint, name, endpoint)
    return endpoint
