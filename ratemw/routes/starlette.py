"""Finding the route a request will reach, before the router runs.

The middleware sits outside the router, so it walks the app's routes itself (as the router
will) to learn the endpoint (whose decorators carry limits) and the route template (so
``/items/{id}`` is one bucket, not one per id). Mounts are descended into.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any

from starlette import routing
from starlette.routing import Match

# Route classes whose matching reads only what a plan cache key holds: the scope type, the
# method, the host, the root path and the path. A route of any other class might route by
# something else (a header, the query), so a request it was asked about is planned afresh.
_STARLETTE_ROUTES = (routing.Route, routing.WebSocketRoute, routing.Mount, routing.Host)
_FASTAPI_ROUTES = (
    "APIRoute",
    "APIWebSocketRoute",
    "_IncludedRouter",
    "_FrontendRoute",
    "_FrontendRouteGroup",
)
_known: set[Any] = set()


def _known_matching(route: Any) -> bool:
    """Whether ``route`` matches the way a stock Starlette or FastAPI route does."""
    matches = getattr(type(route), "matches", None)
    if not _known:
        _known.update(cls.matches for cls in _STARLETTE_ROUTES)
    if matches in _known:
        return True
    fastapi = sys.modules.get("fastapi.routing")
    if fastapi is not None:
        found = {getattr(getattr(fastapi, name, None), "matches", None) for name in _FASTAPI_ROUTES}
        _known.update(found - {None})
    return matches in _known


class Resolution:
    """Where routing sends a request, and whether every route asked could be cached by."""

    __slots__ = ("cacheable", "endpoint", "template")

    def __init__(self) -> None:
        self.endpoint: Any = None
        self.template: str | None = None
        self.cacheable = True


def route_path(scope: Any) -> str:
    """The path the app routes by: ``scope["path"]`` relative to ``root_path`` (as Starlette's
    router sees it)."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return "/"
    return path[len(root_path) :] if path[len(root_path)] == "/" else path


def _template(route: Any) -> str:
    path_format = getattr(route, "path_format", None)
    if isinstance(path_format, str):
        return path_format
    path = getattr(route, "path", "")
    return path if isinstance(path, str) else ""


def _descend(
    route: Any, scope: dict[str, Any], prefix: str, found: Resolution
) -> tuple[Any, str | None]:
    routes = getattr(route, "routes", None) if hasattr(route, "app") else None
    if routes is None:
        return getattr(route, "endpoint", None), prefix + _template(route)
    # A Mount or Host: its template ends in "/{path}" (Mount) or is empty (Host).
    mount_prefix = prefix + _template(route).removesuffix("/{path}")
    endpoint, template = _match(routes, scope, mount_prefix, found)
    if endpoint is None:
        # Nothing inside matches: the router will answer 404 (a Mount of routes), or the
        # mounted app will route it itself (a sub-application, whose limits are its own).
        app = route.app
        inner = None if hasattr(app, "routes") and not hasattr(app, "router") else app
        return inner, mount_prefix + "/{path}"
    return endpoint, template


def _included_router(route: Any, scope: dict[str, Any]) -> tuple[Match, Any, str | None]:
    """Match inside a router FastAPI includes lazily (``app.include_router``).

    Such a router only says whether it matches; the route it would pick, and that route's
    full template, come from its ``_match``.
    """
    match, child, inner, context = route._match(scope)
    if match is Match.NONE or inner is None:
        return Match.NONE, None, None
    if hasattr(inner, "_match") and hasattr(inner, "original_router"):
        _, endpoint, template = _included_router(inner, {**scope, **child})
        return match, endpoint, template
    starlette_route = getattr(context, "starlette_route", None)
    template = getattr(starlette_route, "path_format", None) or getattr(
        context, "path_format", None
    )
    return match, getattr(inner, "endpoint", None), template


def match_routes(routes: Any, scope: dict[str, Any], prefix: str = "") -> tuple[Any, str | None]:
    """The endpoint and template the router would choose for ``scope`` (or ``None``)."""
    return _match(routes, scope, prefix, Resolution())


def _match(
    routes: Any, scope: dict[str, Any], prefix: str, found: Resolution
) -> tuple[Any, str | None]:
    partial: tuple[Any, dict[str, Any]] | None = None
    for route in routes:
        if found.cacheable and not _known_matching(route):
            found.cacheable = False
        if hasattr(route, "_match") and hasattr(route, "original_router"):
            try:
                match, endpoint, template = _included_router(route, scope)
            except Exception:
                continue
            if match is Match.FULL:
                return endpoint, prefix + (template or "")
            continue
        try:
            match, child = route.matches(scope)
        except Exception:  # a route that cannot judge this scope does not match it
            continue
        if match is Match.FULL:
            return _descend(route, {**scope, **child}, prefix, found)
        if match is Match.PARTIAL and partial is None:
            partial = (route, child)
    if partial is not None:
        route, child = partial
        return _descend(route, {**scope, **child}, prefix, found)
    return None, None


def resolve(app: Any, scope: dict[str, Any]) -> Resolution:
    """The endpoint and route template for a request to ``app`` (a Starlette or FastAPI app)."""
    found = Resolution()
    router = getattr(app, "router", app)
    routes = getattr(router, "routes", None)
    if routes:
        found.endpoint, found.template = _match(routes, scope, "", found)
    return found


def templates(app: Any) -> Iterator[tuple[str, tuple[str, ...], Any]]:
    """(template, methods, endpoint) of every route of a Starlette or FastAPI app, inside
    mounts and included routers too. ``HEAD`` is left out (it counts as ``GET``); a WebSocket
    route's method is ``WEBSOCKET``."""
    router = getattr(app, "router", app)
    yield from _walk(getattr(router, "routes", None) or (), "")


def _walk(routes: Iterable[Any], prefix: str) -> Iterator[tuple[str, tuple[str, ...], Any]]:
    fastapi = sys.modules.get("fastapi.routing")
    contexts = getattr(fastapi, "iter_route_contexts", None)
    if contexts is not None:  # FastAPI includes routers lazily: walked as its OpenAPI does
        try:
            routes = list(contexts(routes))
        except Exception:
            routes = list(routes)
    for route in routes:
        inner = getattr(route, "routes", None) if hasattr(route, "app") else None
        if inner is not None:  # a Mount or Host of routes
            yield from _walk(inner, prefix + _template(route).removesuffix("/{path}"))
            continue
        endpoint = getattr(route, "endpoint", None)
        if endpoint is None:
            continue
        methods = getattr(route, "methods", None)
        if methods:
            named = tuple(sorted(m for m in methods if m != "HEAD"))
        elif "websocket" in type(getattr(route, "original_route", route)).__name__.lower():
            named = ("WEBSOCKET",)
        else:
            continue
        yield prefix + _template(route), named, endpoint
