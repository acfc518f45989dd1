"""Django integration: a middleware for ``MIDDLEWARE``, configured from settings.

``settings.py``::

    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "ratemw.contrib.django.RateLimitMiddleware",   # after auth, for user_or_ip()
    ]
    RATEMW_LIMITER = "myproject.limits.limiter"        # a ratemw.Limiter you decorate views with
    # or let ratemw build one (get_limiter() hands it to your views):
    RATEMW = {"storage": "redis://localhost:6379", "default_limits": "100/minute",
              "rules": [{"path": "/static/*", "limit": "300/minute"}]}

``views.py``::

    from myproject.limits import limiter

    @limiter.limit("5/minute")        # "items/<int:pk>/" is one bucket, whatever the pk
    def item(request, pk): ...

Coming from django-ratelimit? ``from ratemw.contrib.django import ratelimit`` (and
``Ratelimited``, ``is_ratelimited``, ``get_usage``, ``ALL``, ``UNSAFE``) takes the same
arguments; see the migration guide.

The middleware works under WSGI and ASGI Django: in an async middleware chain it decides on
the limiter's async storage without blocking the event loop. A Django app wrapped whole can
use ``WSGIRateLimitMiddleware(application, limiter=..., routes=DjangoRoutes())`` instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpResponse  # type: ignore[import-untyped]
from starlette.requests import Request

from ratemw._environ import wsgi_scope
from ratemw.contrib._django_ratelimit import (
    ALL,
    UNSAFE,
    Ratelimited,
    get_usage,
    is_ratelimited,
    ratelimit,
)
from ratemw.contrib._django_settings import Config, current, get_limiter
from ratemw.contrib._django_usage import usage_view
from ratemw.engine import APPLIED, OUTCOME, Engine, Outcome, Plan, ResponseInfo
from ratemw.errors import RateLimitExceeded
from ratemw.keys import client_ip
from ratemw.policy.problems import exceeded_response, unavailable_response
from ratemw.routes.django import DjangoRoutes, resolve_view

__all__ = [
    "ALL",
    "UNSAFE",
    "DjangoRoutes",
    "RateLimitMiddleware",
    "Ratelimited",
    "get_limiter",
    "get_usage",
    "is_ratelimited",
    "ratelimit",
    "usage_view",
    "user_or_ip",
]


# -- the middleware -------------------------------------------------------------------------


class _Pending(NamedTuple):
    config: Config
    engine: Engine
    plan: Plan
    request: Request
    method: str
    path: str


def _prepare(request: Any, is_async: bool) -> _Pending | None:
    config = current()
    limiter = config.limiter
    engine = limiter.engine
    if not engine.settings.enabled:
        return None
    # The same limiter around the whole app too (WSGIRateLimitMiddleware, or the ASGI one):
    # it decided already.
    applied = (*request.META.get(APPLIED, ()), *getattr(request, "scope", {}).get(APPLIED, ()))
    if limiter in applied:
        return None
    request.META[APPLIED] = (*applied, limiter)
    method: str = request.method
    path: str = request.path
    urlconf = getattr(request, "urlconf", None)  # set by middleware such as django-hosts
    path_info: str = request.path_info  # rules match it: relative to SCRIPT_NAME
    cache_key = (method, path, path_info, urlconf)  # the script prefix apart, too
    planner = config.planner
    plan = planner.plans.get(cache_key) if planner.engine is engine else None
    if plan is None:
        plan = planner.plan(engine, cache_key, path_info, method, resolve_view, path_info, urlconf)
    if not plan.entries:
        return None
    scope = wsgi_scope(request.META, method, path)
    scope["django.request"] = request
    scope["django.async"] = is_async
    return _Pending(config, engine, plan, Request(scope), method, path)


def _refusal(pending: _Pending, request: Any, outcome: Outcome) -> Any:
    exc = outcome.exceeded
    handler = pending.config.handler
    if exc is not None and handler is not None:
        return handler(request, exc)
    if exc is not None:
        return _response(*exceeded_response(exc))
    return _response(*unavailable_response(pending.path))


def _response(status: int, headers: list[tuple[str, str]], body: bytes) -> Any:
    response = HttpResponse(body, status=status)
    for name, value in headers:
        response.headers[name] = value
    return response


def _response_info(response: Any) -> ResponseInfo:
    return ResponseInfo(response.status_code, list(response.items()))


def _settle_on_close(engine: Engine, outcome: Outcome, response: Any) -> bool:
    """A streamed response is over when Django closes it: settle then (true if deferred).

    Until then its body is still being produced, so a concurrency slot stays taken.
    """
    if not response.streaming:
        return False
    info = _response_info(response)
    # Django runs these on close(), from its worker thread: the blocking driver suits.
    response._resource_closers.append(lambda: engine.settle(outcome, info))
    return True


def _with_headers(response: Any, headers: list[tuple[str, str]]) -> Any:
    seen: set[str] = set()
    for name, value in headers:
        lowered = name.lower()
        if lowered in seen:
            # Django keeps one value per header name; a comma joins field lines (RFC 9110 5.3).
            response.headers[name] = f"{response.headers[name]}, {value}"
        else:
            response.headers[name] = value
            seen.add(lowered)
    return response


class RateLimitMiddleware:
    """Enforce the settings' ``Limiter`` on a Django project (WSGI or ASGI).

    Decorator limits on views (function and class-based), rules, defaults and application
    limits apply; routes are counted per URL pattern. Refused requests get the same 429
    problem+json as ratemw gives everywhere, or ``settings.RATEMW['handler'](request, exc)``'s
    ``HttpResponse``. Configuration errors raise ``ConfigurationError`` when Django loads the
    middleware.

    Example::

        MIDDLEWARE = [..., "ratemw.contrib.django.RateLimitMiddleware"]
        RATEMW_LIMITER = "myproject.limits.limiter"
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        current()

    def process_exception(self, request: Any, exception: Exception) -> Any:
        """A view raised ``RateLimitExceeded`` (``limiter.hit(..., raise_exceeded=True)``,
        or ``@ratelimit(block=True)``): answer with the standard 429."""
        if not isinstance(exception, RateLimitExceeded):
            return None
        handler = current().handler
        if handler is not None:
            return handler(request, exception)
        return _response(*exceeded_response(exception))

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self.__acall__(request)
        pending = _prepare(request, is_async=False)
        if pending is None:
            return self.get_response(request)
        engine = pending.engine
        outcome = engine.decide(pending.plan, pending.request, pending.method, pending.path)
        if outcome.exceeded is not None or outcome.unavailable:
            return _refusal(pending, request, outcome)
        request.META[OUTCOME] = outcome  # the request's standing, for ratemw.current
        if not outcome.needs_settling:
            return _with_headers(self.get_response(request), outcome.headers)
        try:
            response = self.get_response(request)
        except BaseException:
            engine.settle(outcome, ResponseInfo(500))
            raise
        if not _settle_on_close(engine, outcome, response):
            engine.settle(outcome, _response_info(response))
        return _with_headers(response, outcome.headers)

    async def __acall__(self, request: Any) -> Any:
        pending = _prepare(request, is_async=True)
        if pending is None:
            return await self.get_response(request)
        engine = pending.engine
        outcome = await engine.adecide(pending.plan, pending.request, pending.method, pending.path)
        if outcome.exceeded is None and not outcome.unavailable:
            request.META[OUTCOME] = outcome  # the request's standing, for ratemw.current
        if outcome.exceeded is not None or outcome.unavailable:
            response = _refusal(pending, request, outcome)
            if inspect.isawaitable(response):
                response = await response
            return response
        if not outcome.needs_settling:
            return _with_headers(await self.get_response(request), outcome.headers)
        try:
            response = await self.get_response(request)
        except BaseException:
            await engine.asettle(outcome, ResponseInfo(500))
            raise
        if not _settle_on_close(engine, outcome, response):
            await engine.asettle(outcome, _response_info(response))
        return _with_headers(response, outcome.headers)


# -- keys -----------------------------------------------------------------------------------


class user_or_ip:
    """Key requests by the authenticated Django user, else by ``fallback`` (client address).

    Needs ``RateLimitMiddleware`` placed after ``AuthenticationMiddleware``: the middleware
    hands the Django request to key functions in ``request.scope["django.request"]``. Under
    ASGI the user is loaded with ``request.auser()``, off the event loop.

    Example::

        RATEMW = {"default_limits": "100/minute", "key": user_or_ip()}

    Args:
        fallback: the key function for anonymous requests (default ``keys.client_ip()``).
    """

    def __init__(self, fallback: Callable[[Any], Any] | None = None) -> None:
        self.fallback = fallback if fallback is not None else client_ip()

    def __repr__(self) -> str:
        return f"user_or_ip(fallback={self.fallback!r})"

    def __call__(self, request: Any) -> Any:
        scope = request.scope
        django_request = scope.get("django.request")
        if django_request is None:
            return self.fallback(request)
        if scope.get("django.async"):
            return self._from_async_user(django_request, request)
        return self._identity(getattr(django_request, "user", None), request)

    async def _from_async_user(self, django_request: Any, request: Any) -> Any:
        auser: Callable[[], Awaitable[Any]] | None = getattr(django_request, "auser", None)
        user = await auser() if auser is not None else getattr(django_request, "user", None)
        identity = self._identity(user, request)
        if inspect.isawaitable(identity):
            identity = await identity
        return identity

    def _identity(self, user: Any, request: Any) -> Any:
        if user is not None and getattr(user, "is_authenticated", False):
            return f"user:{user.pk}"
        return self.fallback(request)
