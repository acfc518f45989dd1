"""``WSGIRateLimitMiddleware``: the WSGI adapter (Flask, Django, any WSGI app).

The twin of ``ratemw.asgi.RateLimitMiddleware``: the same decision core decides, driven
by the blocking driver on the limiter's sync storage. Key functions, limit callables and hooks
receive the same Starlette-style request as under ASGI, built from the WSGI environ, so one
key function serves both worlds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from ratemw._environ import request_path, route_path, wsgi_scope
from ratemw.engine import ADAPTER, APPLIED, OUTCOME, Engine, Outcome, Plan, Planner, ResponseInfo
from ratemw.errors import ConfigurationError, RateLimitExceeded
from ratemw.limiter import Limiter
from ratemw.policy.groups import is_async_callable
from ratemw.policy.problems import exceeded_response, unavailable_response
from ratemw.policy.rules import Rule

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = [
    "RouteResolver",
    "WSGIExceededHandler",
    "WSGIRateLimitMiddleware",
    "request_path",
    "wsgi_scope",
]

RouteResolver = Callable[["WSGIEnvironment"], tuple[Any, "str | None"]]
WSGIExceededHandler = Callable[[Any, RateLimitExceeded], "WSGIApplication"]

_STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in (HTTPStatus(429), HTTPStatus(503))}


def _no_route() -> tuple[Any, str | None]:
    return None, None


def _framework_routes(app: Any) -> RouteResolver | None:
    """The resolver for a Flask app's ``wsgi_app`` or a Django ``WSGIHandler``, if ``app`` is one.

    Recognised without importing either framework, so generic WSGI apps need neither.
    """
    owner = getattr(app, "__self__", app)  # Flask's app.wsgi_app is a bound method
    if hasattr(owner, "url_map") and hasattr(owner, "view_functions"):
        from ratemw.routes.flask import FlaskRoutes

        return FlaskRoutes(owner)
    if type(owner).__module__.startswith("django.core.handlers."):
        from ratemw.routes.django import DjangoRoutes

        return DjangoRoutes()
    return None


def _adding(
    start_response: StartResponse,
    extra: list[tuple[str, str]],
    watch: Callable[[str, list[tuple[str, str]]], None] | None = None,
) -> StartResponse:
    """``start_response`` with ``extra`` headers appended (and the response shown to ``watch``)."""

    def start(
        status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> Callable[[bytes], object]:
        if watch is not None:
            watch(status, headers)
        headers = [*headers, *extra]
        if exc_info is None:  # some servers' start_response takes no exc_info at all
            return start_response(status, headers)
        return start_response(status, headers, exc_info)

    return start


class _Settling:
    """The app's response iterable, unchanged but for ``close()``, which then settles.

    Servers call ``close()`` once the response is over (sent, or abandoned): that is when a
    concurrency slot is freed and ``deduct_when`` learns the status. Iteration is the app's
    own iterator, so streaming is untouched.
    """

    __slots__ = ("_done", "_result", "_settle")

    def __init__(self, result: Iterable[bytes], settle: Callable[[], None]) -> None:
        self._result = result
        self._settle = settle
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._settle()


class WSGIRateLimitMiddleware:
    """Enforce a ``Limiter``'s limits on a WSGI app.

    Requests over a limit get the same 429 problem+json response as under ASGI; others go
    through with ``RateLimit`` headers appended in ``start_response``. The response iterable
    is returned untouched (never consumed, ``close()`` kept), so streaming works; only limits
    that act once the response is over (``"5 concurrent"``, ``deduct_when``) wrap it, to
    learn when the server closes it.

    Example::

        app.wsgi_app = WSGIRateLimitMiddleware(app.wsgi_app, limiter=limiter)   # Flask

        @app.get("/items/<int:item_id>")
        @limiter.limit("5/minute")
        def item(item_id): ...

    Args:
        app: the WSGI app.
        limiter: the ``Limiter``.
        rules: extra ``Rule``s for this app.
        handler: ``handler(request, exc)`` returning a WSGI application (a werkzeug
            ``Response`` is one) to answer instead of the default 429.
        routes: ``routes(environ) -> (endpoint, template)``: the view a request will reach
            and its route template, so ``@limiter.limit`` on views applies and
            ``/items/<int:id>`` is one bucket (``ratemw.contrib.flask.FlaskRoutes``,
            ``ratemw.contrib.django.DjangoRoutes``). By default a Flask ``app.wsgi_app`` or a
            Django ``WSGIHandler`` gets its framework's resolver; for any other app only
            rules, defaults and application limits apply, all routes counted in one bucket.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        limiter: Limiter,
        rules: Iterable[Rule] = (),
        handler: WSGIExceededHandler | None = None,
        routes: RouteResolver | None = None,
    ) -> None:
        if not isinstance(limiter, Limiter):
            raise ConfigurationError(f"limiter must be a ratemw.Limiter, got {limiter!r}")
        if handler is not None and (not callable(handler) or is_async_callable(handler)):
            raise ConfigurationError(
                f"handler must be a sync callable returning a WSGI app, got {handler!r}"
            )
        if routes is not None and not callable(routes):
            raise ConfigurationError(f"routes must be callable (environ -> ...), got {routes!r}")
        self.app = app
        self.limiter = limiter
        self.rules = limiter.check_rules(rules)
        self.handler = handler
        self.routes = routes if routes is not None else _framework_routes(app)
        self._planner = Planner(self.rules)
        catch_raised = getattr(self.routes, "catch_raised", None)
        if catch_raised is not None:  # Flask answers a view's exceptions itself
            catch_raised(self._raised_answer)

    def __repr__(self) -> str:
        rules = list(self.rules)
        return f"WSGIRateLimitMiddleware({self.app!r}, limiter={self.limiter!r}, rules={rules!r})"

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        limiter = self.limiter
        engine = limiter.engine
        if not engine.settings.enabled:
            return self.app(environ, start_response)
        applied = environ.get(APPLIED)
        if applied is not None and limiter in applied:
            return self.app(environ, start_response)  # installed twice: the outer one decided
        # Marked while the app below is called, so a caller that serves several requests
        # from one environ (a test harness) has each of them limited.
        environ[APPLIED] = (*(applied or ()), limiter)
        environ[ADAPTER] = self  # for the usage endpoint: this adapter's routes and rules
        try:
            return self._limit(engine, environ, start_response)
        except RateLimitExceeded as exc:  # raised by the app: limiter.hit(...) in code
            return self._answer_raised(environ, start_response, exc)
        finally:
            environ.pop(OUTCOME, None)
            if applied is None:
                environ.pop(APPLIED, None)
            else:
                environ[APPLIED] = applied

    def plan_for(self, environ: WSGIEnvironment) -> Plan:
        """The plan a request with this environ would be decided on (the usage endpoint asks
        it for the route a caller names)."""
        method = environ.get("REQUEST_METHOD", "GET").upper()
        return self._plan(self.limiter.engine, environ, method, request_path(environ))

    def _plan(self, engine: Engine, environ: WSGIEnvironment, method: str, path: str) -> Plan:
        # Routing may depend on the host (Flask subdomains, host matching), so it is part of
        # the key; the path is the decoded one, so equivalent spellings share an entry.
        routes = self.routes
        host = None if routes is None else environ.get("HTTP_HOST", "")
        # SCRIPT_NAME apart: "/api" + "/search" and "" + "/api/search" route differently.
        cache_key = (method, host, environ.get("SCRIPT_NAME", ""), path)
        planner = self._planner
        plan = planner.plans.get(cache_key) if planner.engine is engine else None
        if plan is None:
            # Rules match the path the app routes by, relative to SCRIPT_NAME.
            relative = route_path(environ)
            if routes is None:
                plan = planner.plan(engine, cache_key, relative, method, _no_route)
            else:
                plan = planner.plan(engine, cache_key, relative, method, routes, environ)
        return plan

    def _limit(
        self, engine: Engine, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        path = request_path(environ)
        plan = self._plan(engine, environ, method, path)
        if not plan.entries:
            return self.app(environ, start_response)
        scope = wsgi_scope(environ, method, path)
        # Nothing reading past the scope: the scope serves as the request (see wsgi_scope).
        request: Any = Request(scope) if plan.needs_request else scope
        outcome = engine.decide(plan, request, method, path)
        if outcome.exceeded is not None or outcome.unavailable:
            return self._refuse(environ, start_response, request, outcome, path)
        environ[OUTCOME] = outcome  # the request's standing, for ratemw.current
        if outcome.needs_settling:
            return self._call_and_settle(engine, environ, start_response, outcome)
        if not outcome.headers:
            return self.app(environ, start_response)
        return self.app(environ, _adding(start_response, outcome.headers))

    def _raised_answer(self, exc: RateLimitExceeded) -> WSGIApplication:
        """The WSGI application answering ``exc`` (for a framework's error handler)."""

        def answer(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            return self._answer_raised(environ, start_response, exc)

        return answer

    def _answer_raised(
        self, environ: WSGIEnvironment, start_response: StartResponse, exc: RateLimitExceeded
    ) -> Iterable[bytes]:
        """Answer a ``RateLimitExceeded`` the app raised with the same 429 as a refusal (a
        server that already sent headers raises again, as WSGI says)."""
        if self.handler is not None:
            request = Request(wsgi_scope(environ, exc.method, request_path(environ)))
            return self.handler(request, exc)(environ, start_response)
        status, headers, body = exceeded_response(exc)
        exc_info = sys.exc_info()
        if exc_info[0] is None:
            start_response(_STATUS_LINES[status], headers)
        else:
            start_response(_STATUS_LINES[status], headers, exc_info)
        return [body]

    def _call_and_settle(
        self,
        engine: Engine,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        outcome: Outcome,
    ) -> Iterable[bytes]:
        """Call the app; once the server closes the response, free slots and settle refunds."""
        # Until the app starts a response, a failure means a 500.
        response = ResponseInfo(500)

        def watch(status: str, headers: list[tuple[str, str]]) -> None:
            nonlocal response
            response = ResponseInfo(int(status[:3]), list(headers))

        def settle_now() -> None:
            engine.settle(outcome, response)

        try:
            result = self.app(environ, _adding(start_response, outcome.headers, watch))
        except BaseException:
            settle_now()
            raise
        return _Settling(result, settle_now)

    def _refuse(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        request: Any,
        outcome: Outcome,
        path: str,
    ) -> Iterable[bytes]:
        exc = outcome.exceeded
        if exc is not None and self.handler is not None:
            if not isinstance(request, Request):
                request = Request(request.scope)
            # A framework's handler may need its context (Flask's jsonify needs the app's).
            context = getattr(self.routes, "request_context", None)
            if context is None:
                return self.handler(request, exc)(environ, start_response)
            with context(environ):
                return self.handler(request, exc)(environ, start_response)
        if exc is not None:
            status, headers, body = exceeded_response(exc)
        else:
            status, headers, body = unavailable_response(path)
        start_response(_STATUS_LINES[status], headers)
        return [body]
