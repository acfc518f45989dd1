"""Finding the route a request will reach, before the router runs.

The middleware sits outside the router, so it walks the app's routes itself (as the router
will) to learn the endpoint (whose decorators carry limits) and the route template (so
``/items/{id}`` is one bucket, not one per id). Mounts are descended into.
"""

from __future__ import annotations

from typing import Any

from starlette.routing import Match


def _template(route: Any) -> str:
    path_format = getattr(route, "path_format", None)
    if isinstance(path_format, str):
        return path_format
    path = getattr(route, "path", "")
    return path if isinstance(path, str) else ""


def _descend(route: Any, scope: dict[str, Any], prefix: str) -> tuple[Any, str | None]:
    routes = getattr(route, "routes", None) if hasattr(route, "app") else None
    if routes is None:
        return getattr(route, "endpoint", None), prefix + _template(route)
    # A Mount or Host: its template ends in "/{path}" (Mount) or is empty (Host).
    mount_prefix = prefix + _template(route).removesuffix("/{path}")
    endpoint, template = match_routes(routes, scope, mount_prefix)
    if endpoint is None:
        return route.app, mount_prefix + "/{path}"
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
    partial: tuple[Any, dict[str, Any]] | None = None
    for route in routes:
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
            return _descend(route, {**scope, **child}, prefix)
        if match is Match.PARTIAL and partial is None:
            partial = (route, child)
    if partial is not None:
        route, child = partial
        return _descend(route, {**scope, **child}, prefix)
    return None, None


def resolve(app: Any, scope: dict[str, Any]) -> tuple[Any, str | None]:
    """The endpoint and route template for a request to ``app`` (a Starlette or FastAPI app)."""
    router = getattr(app, "router", app)
    routes = getattr(router, "routes", None)
    if not routes:
        return None, None
    return match_routes(routes, scope)
