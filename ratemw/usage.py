"""A usage endpoint for callers: their own standing under a route's limits, counting nothing.

Like GitHub's ``GET /rate_limit``: a caller asks how much of its quota is left before it
spends any. The endpoint decides as the middleware would for the route named (the same
plan, key functions, rules and storage) but only looks (``op="peek"``): a million calls to
it leave every count as it was, and it reports nothing (no hooks, metrics or log lines). The
caller is identified by its own request (its address, its API key header, ...): there is
no way to ask about anyone else.

``GET /rate_limit?path=/search`` (and ``&method=POST``, default ``GET``) reports the route
that path reaches; without ``path``, every route of the app with a limit (Starlette,
FastAPI, Flask and Django apps). The answer, ``application/json``::

    {"routes": [{"route": "/search", "method": "GET", "allowed": true, "retry_after": null,
                 "policies": [{"name": "per-minute", "quota": 5, "unit": "requests",
                               "window": 60, "remaining": 4, "reset": 42}]}]}

``remaining`` is what the caller may still spend now; the next request takes its cost, so
its ``RateLimit`` header then says one less. The policies carry the fields of the problem
body. A route without limits is left out.

Mount it behind the middleware (which exempts nothing by itself: decorate the endpoint
with ``@limiter.exempt`` to keep its own calls out of application-wide limits, as the
helpers below do)::

    from ratemw.usage import UsageEndpoint

    app = Starlette(routes=[..., Route("/rate_limit", UsageEndpoint(limiter))])

Flask: ``ratemw.contrib.flask.usage_view``; Django: ``ratemw.contrib.django.usage_view``;
other WSGI apps: ``WSGIUsageEndpoint``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.requests import HTTPConnection, Request

from ratemw._environ import request_path, wsgi_scope
from ratemw.engine import ADAPTER, Engine, Plan
from ratemw.engine.calls import decision_of_call
from ratemw.engine.plans import NO_ROUTE
from ratemw.errors import ConfigurationError
from ratemw.limiter import Limiter
from ratemw.policy.decision import Decision
from ratemw.policy.groups import KNOWN_METHODS
from ratemw.routes.starlette import resolve, route_path, templates

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment
    from starlette.types import Receive, Scope, Send

__all__ = ["MAX_PATH", "UsageEndpoint", "WSGIUsageEndpoint", "entry", "parse_query"]

#: The longest path a caller may ask about.
MAX_PATH = 2048
_HEADERS = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
_PROBLEM = [("Content-Type", "application/problem+json"), ("Cache-Control", "no-store")]

# (template, method, plan) of each route to report
Rows = list[tuple[str, str, Plan]]


def parse_query(query: Mapping[str, str]) -> tuple[str | None, str] | str:
    """The route asked about: ``(path or None for every route, method)``, or what is wrong
    with the query (a sentence for a 400)."""
    path = query.get("path")
    method = (query.get("method") or "GET").upper()
    if method not in KNOWN_METHODS:
        return f"unknown method {method[:20]!r}: expected one of {sorted(KNOWN_METHODS)}"
    if path is None:
        return None, method
    if not path.startswith("/") or len(path) > MAX_PATH or any(c in path for c in "\x00?#"):
        return f"invalid path: expected a path such as /search, of at most {MAX_PATH} characters"
    return path, method


def entry(template: str, method: str, decision: Decision) -> dict[str, Any]:
    """One route's standing, as the endpoint reports it."""
    return {
        "route": template,
        "method": method,
        "allowed": decision.allowed,
        "retry_after": decision.retry_after,
        "policies": [policy.as_dict() for policy in decision.policies],
    }


def _body(entries: Iterable[dict[str, Any]]) -> bytes:
    return json.dumps({"routes": list(entries)}, separators=(",", ":")).encode()


def _problem(detail: str) -> bytes:
    return json.dumps(
        {"type": "about:blank", "title": "Bad Request", "status": 400, "detail": detail}
    ).encode()


def _standing(outcome: Any) -> Decision | None:
    decision = decision_of_call(outcome, False)
    return decision if decision.policies or decision.unavailable else None


def _check(limiter: Any) -> None:
    if not isinstance(limiter, Limiter):
        raise ConfigurationError(f"limiter must be a ratemw.Limiter, got {limiter!r}")


def _exempt(endpoint: Any, limiter: Limiter) -> None:
    """Keep the endpoint's own calls out of every count (application-wide limits too)."""
    limiter.exempt(endpoint)


class UsageEndpoint:
    """The usage endpoint as an ASGI app, for Starlette and FastAPI (see the module).

    Example::

        app = Starlette(routes=[Route("/rate_limit", UsageEndpoint(limiter))])
        app.add_middleware(RateLimitMiddleware, limiter=limiter)

    FastAPI: ``app.add_route("/rate_limit", UsageEndpoint(limiter))``.
    """

    def __init__(self, limiter: Limiter) -> None:
        _check(limiter)
        self.limiter = limiter
        _exempt(self, limiter)

    def __repr__(self) -> str:
        return f"UsageEndpoint(limiter={self.limiter!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        asked = parse_query(query)
        if isinstance(asked, str):
            await _send(send, 400, _PROBLEM, _problem(asked))
            return
        path, method = asked
        engine = self.limiter.engine
        adapter = scope.get(ADAPTER)
        if getattr(adapter, "limiter", None) is not self.limiter:
            adapter = None  # not behind this limiter's middleware: no extra rules to apply
        entries = []
        for template, row_method, plan, target in self._rows(engine, scope, adapter, path, method):
            request = Request(target) if target["type"] == "http" else HTTPConnection(target)
            outcome = await engine.adecide(plan, request, row_method, target["path"], op="peek")
            decision = _standing(outcome)
            if decision is not None:
                entries.append(entry(template, row_method, decision))
        await _send(send, 200, _HEADERS, _body(entries))

    def _rows(
        self, engine: Engine, scope: Scope, adapter: Any, path: str | None, method: str
    ) -> list[tuple[str, str, Plan, dict[str, Any]]]:
        root = scope.get("app_root_path", scope.get("root_path", ""))
        app = scope.get("app")
        if path is not None:
            target = _target(scope, root, path, method)
            if adapter is not None:
                plan = adapter.plan_for(target)
            else:
                found = resolve(app, target)
                plan = engine.plan(found.endpoint, found.template, route_path(target), method)
            return [(_named(plan, path), method, plan, target)]
        rules = adapter.rules if adapter is not None else ()
        rows = []
        for template, methods, endpoint in templates(app):
            for each in methods:
                plan = engine.plan(endpoint, template, template, each, rules, from_template=True)
                if plan.entries:
                    rows.append((template, each, plan, _target(scope, root, template, each)))
        return rows


def _named(plan: Plan, path: str) -> str:
    return path if plan.template == NO_ROUTE else plan.template


def _target(scope: Scope, root: str, path: str, method: str) -> dict[str, Any]:
    """The scope of a request to ``path``, from the caller of the usage endpoint (its
    address and headers: who it is)."""
    full = root + path
    return {
        **scope,
        "type": "websocket" if method == "WEBSOCKET" else "http",
        "method": method,
        "path": full,
        "raw_path": full.encode("utf-8", "surrogateescape"),
        "root_path": root,
        "query_string": b"",
        "path_params": {},
    }


async def _send(send: Send, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    raw = [(name.lower().encode(), value.encode()) for name, value in headers]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class WSGIUsageEndpoint:
    """The usage endpoint as a WSGI app, behind ``WSGIRateLimitMiddleware`` (see the module).

    Without ``?path=``, every route is reported when the middleware knows the app's routes
    (Flask; Django has ``ratemw.contrib.django.usage_view``); otherwise a 400 asks for one.
    """

    def __init__(self, limiter: Limiter) -> None:
        _check(limiter)
        self.limiter = limiter
        _exempt(self, limiter)

    def __repr__(self) -> str:
        return f"WSGIUsageEndpoint(limiter={self.limiter!r})"

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        query = dict(parse_qsl(environ.get("QUERY_STRING", "")))
        asked = parse_query(query)
        adapter = environ.get(ADAPTER)
        if getattr(adapter, "limiter", None) is not self.limiter:
            adapter = None
        listing = getattr(getattr(adapter, "routes", None), "templates", None)
        if not isinstance(asked, str) and asked[0] is None and listing is None:
            asked = "name a route: ?path=/search (this app's routes cannot be listed)"
        if isinstance(asked, str):
            start_response("400 Bad Request", _PROBLEM)
            return [_problem(asked)]
        path, method = asked
        engine = self.limiter.engine
        entries = []
        if path is not None:
            target = _wsgi_target(environ, path, method)
            if adapter is not None:
                plan = adapter.plan_for(target)
            else:
                plan = engine.plan(None, None, path, method)
            rows = [(_named(plan, path), method, plan, target)]
        else:
            rules = adapter.rules if adapter is not None else ()
            rows = []
            for template, methods, endpoint in listing():  # type: ignore[misc]
                for each in methods:
                    plan = engine.plan(
                        endpoint, template, template, each, rules, from_template=True
                    )
                    if plan.entries:
                        rows.append((template, each, plan, _wsgi_target(environ, template, each)))
        for template, row_method, plan, target in rows:
            scope = wsgi_scope(target, row_method, request_path(target))
            outcome = engine.decide(plan, Request(scope), row_method, scope["path"], op="peek")
            decision = _standing(outcome)
            if decision is not None:
                entries.append(entry(template, row_method, decision))
        body = _body(entries)
        start_response("200 OK", [*_HEADERS, ("Content-Length", str(len(body)))])
        return [body]


def _wsgi_target(environ: WSGIEnvironment, path: str, method: str) -> dict[str, Any]:
    target = dict(environ)
    wire = path.encode("utf-8", "surrogateescape").decode("latin-1")  # as PEP 3333 has it
    target.update(REQUEST_METHOD=method, PATH_INFO=wire, QUERY_STRING="")
    target.pop(ADAPTER, None)
    return target
