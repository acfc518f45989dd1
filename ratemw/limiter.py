"""The ``Limiter``: an app's rate-limit configuration and the route decorators.

The limiter holds settings (checked when it is built, fixed after) and declarations (what
the decorators attach to endpoints); what runs requests is its ``engine``
(``ratemw.engine.Engine``), built from them. The adapters call the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, TypeVar

from ratemw._clock import monotonic_ms
from ratemw._redact import redact_uri
from ratemw.engine import Declarations, Engine, Metrics, Settings, Storages
from ratemw.engine.breaker import CircuitBreaker
from ratemw.engine.calls import ADMITTED, CodeCalls, decision_of_call
from ratemw.engine.failures import FailureLog
from ratemw.engine.hits import KeyHasher
from ratemw.engine.settings import build_settings, check_groups, check_rules
from ratemw.errors import ConfigurationError
from ratemw.policy.decision import Decision
from ratemw.policy.groups import (
    CostValue,
    LimitGroup,
    LimitValue,
    by_request,
    check_callable,
    groups_from,
)
from ratemw.policy.rules import Rule
from ratemw.storage import StorageBackends
from ratemw.storage.base import STRATEGIES

__all__ = ["Limiter", "Metrics"]

F = TypeVar("F", bound=Callable[..., Any])

_SETTINGS = frozenset(Settings.__dataclass_fields__)
#: Settings that shape the storage or its keys: fixed for a limiter's life.
_FIXED = frozenset({"storage", "strategy", "key_prefix", "storage_options", "clock", "breaker"})


def _options(arguments: dict[str, Any]) -> dict[str, Any]:
    """A decorator's keyword options, as its ``locals()`` hold them."""
    return {k: v for k, v in arguments.items() if k not in ("self", "limit", "scope")}


def _redis_serves(strategy: str) -> bool:
    from ratemw.storage.redis import serves

    return serves(strategy)


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
        fallback_limits: the limits a limit callable that fails falls back to, when it has
            no ``fallback=`` of its own (default: the static ``default_limits``).
        count_preflight: count CORS preflight requests (``OPTIONS`` with an ``Origin`` and an
            ``Access-Control-Request-Method`` header). By default they are neither counted
            nor refused: a browser sends one before a caller's real request, which counts.
            A plain ``OPTIONS`` is counted either way.
        exempt_paths: paths no limit applies to, such as health probes
            (``["/healthz", "/readyz", "/livez"]``); written as rule paths (``"/health*"``,
            ``"/status/{name}"``), matched against the path the app routes by. Empty by
            default.

    A limiter's settings are fixed once it is built: assigning one raises. To change them on
    a limiter in use, call ``reconfigure``, which checks the new settings and builds a new
    engine (the storage, its counts and its health are kept). The route decorators may be
    used at any time: a route decorated after it was first served is planned again.
    """

    engine: Engine
    _arguments: dict[str, Any]
    _declarations: Declarations
    _storages: Storages
    _failures: FailureLog
    _hasher: KeyHasher
    _calls: CodeCalls

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
        count_preflight: bool = False,
        exempt_paths: Iterable[str] = (),
    ) -> None:
        arguments = dict(locals())
        del arguments["self"]
        for name in ("rules", "exempt_paths"):
            value = arguments[name]
            if isinstance(value, Iterable) and not isinstance(value, str):
                arguments[name] = tuple(value)
        name = redact_uri(storage) if isinstance(storage, str) else repr(storage)
        settings = build_settings(arguments, storage_name=name)
        backends = StorageBackends(
            storage, options=storage_options, clock=clock, key_prefix=key_prefix
        )
        if backends.scheme != "memory" and not _redis_serves(strategy):
            raise ConfigurationError(
                f"strategy {strategy!r} is not served by {backends.scheme!r} storage: "
                f"Redis storages count {list(STRATEGIES)} and strategies of your own that "
                "bring their Lua (a 'lua' attribute)"
            )
        state = self.__dict__
        state["_arguments"] = arguments
        state["_declarations"] = Declarations()
        state["_storages"] = Storages(backends, CircuitBreaker(name=name, **(breaker or {})))
        state["_failures"] = FailureLog(clock or monotonic_ms)
        state["_hasher"] = KeyHasher()
        state["_calls"] = CodeCalls(state["_failures"])
        state["engine"] = self._build(settings)

    def _build(self, settings: Settings) -> Engine:
        return Engine(settings, self._declarations, self._storages, self._failures, self._hasher)

    def _rebuild(self) -> None:
        """A new engine of the same settings: what the declarations changed is planned anew."""
        self.__dict__["engine"] = self._build(self.engine.settings)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"a Limiter's settings are fixed once it is built (tried to set {name!r}); "
            "call limiter.reconfigure(...) to change them on a limiter in use"
        )

    def reconfigure(self, **changes: Any) -> None:
        """Change settings of a limiter in use: they are checked as at start-up, then a new
        engine takes over. Plans are made again; counts and the storage are kept.

        The storage, strategy, key prefix, storage options, clock and breaker are fixed for
        a limiter's life (they shape its storage); build a new ``Limiter`` to change them.

        Example::

            limiter.reconfigure(shadow=True)            # report, stop enforcing
            limiter.reconfigure(default_limits="50/minute")
        """
        unknown = sorted(set(changes) - set(self._arguments))
        if unknown:
            raise ConfigurationError(
                f"unknown Limiter setting(s) {unknown}; expected some of "
                f"{sorted(set(self._arguments) - _FIXED)}"
            )
        fixed = sorted(set(changes) & _FIXED)
        if fixed:
            raise ConfigurationError(
                f"{fixed} cannot change on a limiter in use (they shape its storage): "
                "build a new Limiter"
            )
        arguments = {**self._arguments, **changes}
        if "rules" in changes and not isinstance(changes["rules"], str):
            arguments["rules"] = tuple(changes["rules"])
        settings = build_settings(
            arguments,
            storage_name=self.engine.settings.storage_name,
            request_filters=self.engine.settings.request_filters,
        )
        check_groups(self._declarations.all_groups(), settings.strategy, settings.fallback_quotas)
        self.__dict__["_arguments"] = arguments
        self.__dict__["engine"] = self._build(settings)

    def __repr__(self) -> str:
        settings = self.engine.settings
        return (
            f"Limiter(storage={settings.storage_name!r}, strategy={settings.strategy!r}, "
            f"enabled={settings.enabled!r})"
        )

    # -- what it was built with (read-only) --------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The checked settings its engine runs by."""
        return self.engine.settings

    def __getattr__(self, name: str) -> Any:
        # Reading a setting (``limiter.strategy``, ``limiter.key``, ``limiter.rules``...)
        # reads the engine's; only names not found on the Limiter itself come here.
        if name in _SETTINGS:
            return getattr(self.__dict__["engine"].settings, name)
        raise AttributeError(f"'Limiter' object has no attribute {name!r}")

    @property
    def storage_uri(self) -> str:
        return str(self._arguments["storage"])

    @property
    def storage_uri_redacted(self) -> str:
        """The storage URI with its passwords replaced by ``***`` (for messages and logs)."""
        return self.engine.settings.storage_name

    @property
    def backends(self) -> StorageBackends:
        """The storage's sync and async faces."""
        return self._storages.backends

    @property
    def breaker(self) -> CircuitBreaker:
        return self._storages.breaker

    @property
    def fallback_storage(self) -> StorageBackends:
        """The per-process memory storage of ``failure_mode="fallback"``."""
        return self._storages.fallback

    def check_rules(self, rules: Iterable[Any]) -> tuple[Rule, ...]:
        """Validate rules for this limiter (a middleware's ``rules=``)."""
        return check_rules(rules, self.engine.settings)

    # -- decorators ---------------------------------------------------------------------------

    def _declare(self, groups: tuple[LimitGroup, ...]) -> Callable[[F], F]:
        settings = self.engine.settings
        check_groups(groups, settings.strategy, settings.fallback_quotas)

        def decorator(endpoint: F) -> F:
            self._declarations.add(endpoint, groups)
            self._rebuild()  # a route served before is planned again
            return endpoint

        return decorator

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
        block: bool = True,
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
            block: ``False`` counts and decides but lets a request over the limit through,
                marked: ``ratemw.current(request).exceeded`` is true, and the headers tell
                the truth. The endpoint decides what to do (serve cached results, a smaller
                answer). django-ratelimit's ``block=False``.

        Callables (``limit``, ``key``, ``cost``, ``exempt_when``, ``deduct_when``,
        ``error_message``) may be sync or async, and may take the request or nothing at
        all; a limit callable whose one parameter is named ``key`` gets the caller's
        identity. What each does when it fails is in docs/headers-and-errors.md.
        """
        return self._declare(groups_from("route", limit, **_options(locals())))

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
        block: bool = True,
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
        options = _options(locals())
        return self._declare(
            groups_from("shared", limit, bucket=scope, name_prefix=f"{scope}-", **options)
        )

    def exempt(self, endpoint: F) -> F:
        """Exempt a route from every limit (defaults, application limits and rules included)."""
        self._declarations.exempt(endpoint)
        self._rebuild()
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
        settings = self.engine.settings
        filters = (*settings.request_filters, by_request(fn))
        self.__dict__["engine"] = self._build(replace(settings, request_filters=filters))
        return fn

    # -- limits from code ---------------------------------------------------------------------

    def hit(
        self,
        key: Any,
        limit: str | Iterable[str],
        *,
        scope: str | None = None,
        cost: Any = 1,
        request: Any = None,
        raise_exceeded: bool = False,
    ) -> Decision:
        """Count one call against ``limit`` for ``key``, and say whether it was admitted.

        The same strategies, storage, clock and all-or-nothing rule as the middleware:
        with several limits (``"5/minute;100/day"``, or a list) the call is counted by all of
        them or by none. ``scope`` names the counts: calls with one ``scope`` and ``key``
        share them, and share them with ``@limiter.shared_limit(..., scope=...)`` routes
        whose key function gives the same identity. Without a scope, calls with the same
        limit share counts.

        Example (count failed logins per username, after the password check)::

            if not password_ok:
                decision = limiter.hit(username, "5/15 minutes", scope="login-failures")
                if not decision.allowed:
                    ...  # locked out for decision.retry_after seconds

        Args:
            key: who is counted: a string, an integer, bytes or a UUID (capped and hashed
                like any identity). Anything else (``None``, ``""``) counts in one shared
                bucket of keys that name nobody (logged once per incident).
            limit: a limit string, or a list of them.
            scope: the name of the counts (default: the limit).
            cost: units this call takes, a whole number >= 1 (anything else counts 1).
            request: the request this call is made for, if any: hooks see it, and a refusal's
                detail names its method and path.
            raise_exceeded: raise ``RateLimitExceeded`` instead of returning a refusal
                (inside an endpoint behind the middleware, it becomes the standard 429), and
                ``StorageError`` when the storage fails under ``failure_mode="deny"``.

        Returns:
            A ``Decision``: ``allowed``, ``retry_after``, and a ``PolicyState`` per policy
            (``name``, ``quota``, ``window``, ``remaining``, ``reset``).
        """
        if not self.engine.settings.enabled:
            self._calls.group(self.engine, limit, scope, 1)  # a bad limit fails even so
            return ADMITTED
        plan, caller = self._calls.prepare(self.engine, key, limit, scope, cost, request)
        return decision_of_call(self.engine.hit(plan, caller), raise_exceeded)

    async def ahit(
        self,
        key: Any,
        limit: str | Iterable[str],
        *,
        scope: str | None = None,
        cost: Any = 1,
        request: Any = None,
        raise_exceeded: bool = False,
    ) -> Decision:
        """The async twin of ``hit`` (async storage, for ASGI apps and async code)."""
        if not self.engine.settings.enabled:
            self._calls.group(self.engine, limit, scope, 1)  # a bad limit fails even so
            return ADMITTED
        plan, caller = self._calls.prepare(self.engine, key, limit, scope, cost, request)
        return decision_of_call(await self.engine.ahit(plan, caller), raise_exceeded)

    def peek(
        self,
        key: Any,
        limit: str | Iterable[str],
        *,
        scope: str | None = None,
        cost: Any = 1,
        request: Any = None,
        raise_exceeded: bool = False,
    ) -> Decision:
        """Whether a call like ``hit``'s would be admitted now, counting nothing.

        ``remaining`` is what is left now (nothing is taken); with ``raise_exceeded`` a call
        that would be refused raises ``RateLimitExceeded`` (the standard 429 in an endpoint).
        Example: refuse a login early for a username already locked out, without counting
        the attempt::

            limiter.peek(username, "5/15 minutes", scope="login-failures", raise_exceeded=True)
        """
        if not self.engine.settings.enabled:
            self._calls.group(self.engine, limit, scope, 1)  # a bad limit fails even so
            return ADMITTED
        plan, caller = self._calls.prepare(self.engine, key, limit, scope, cost, request)
        return decision_of_call(self.engine.hit(plan, caller, op="peek"), raise_exceeded)

    async def apeek(
        self,
        key: Any,
        limit: str | Iterable[str],
        *,
        scope: str | None = None,
        cost: Any = 1,
        request: Any = None,
        raise_exceeded: bool = False,
    ) -> Decision:
        """The async twin of ``peek``."""
        if not self.engine.settings.enabled:
            self._calls.group(self.engine, limit, scope, 1)  # a bad limit fails even so
            return ADMITTED
        plan, caller = self._calls.prepare(self.engine, key, limit, scope, cost, request)
        outcome = await self.engine.ahit(plan, caller, op="peek")
        return decision_of_call(outcome, raise_exceeded)

    # -- storage ------------------------------------------------------------------------------

    def check_storage(self) -> None:
        """Connect to the storage and run its script once, counting nothing (sync storage).

        Raises ``StorageError`` naming the storage (without its password) and the reason. For
        an app that should not start when its limits cannot be enforced, call it at start-up
        (``await limiter.acheck_storage()`` in an ASGI lifespan); ``ratemw check --ping``
        does the same from the command line.
        """
        self.backends.sync.check()

    async def acheck_storage(self) -> None:
        """The async twin of ``check_storage`` (async storage, for ASGI apps)."""
        await self.backends.async_.check()

    def reset(self) -> None:
        """Forget every count (sync storage; for tests and admin tasks)."""
        self.backends.sync.reset()
        if self._storages.has_fallback:
            self._storages.fallback.sync.reset()

    async def areset(self) -> None:
        """Forget every count (async storage)."""
        await self.backends.async_.reset()
        if self._storages.has_fallback:
            await self._storages.fallback.async_.reset()
