"""The Django view a request will reach, and its URL pattern, resolved before Django runs it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from django.core.handlers.wsgi import get_path_info  # type: ignore[import-untyped]
from django.urls import Resolver404, get_resolver, resolve  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["DjangoRoutes", "resolve_view", "templates"]


def resolve_view(path_info: str, urlconf: Any = None) -> tuple[Any, str | None]:
    """The view Django will route ``path_info`` to and its URL pattern (``None``s on 404)."""
    try:
        match = resolve(path_info, urlconf)
    except Resolver404:
        return None, None
    route = match.route
    return match.func, route if isinstance(route, str) else None


def templates(urlconf: Any = None) -> Iterator[tuple[str, tuple[str, ...], Any]]:
    """(pattern, methods, view) of every URL pattern, as ``resolve_view`` names them. A
    class-based view's methods are those it defines; a function view's, ``GET``."""
    yield from _walk(get_resolver(urlconf).url_patterns, "")


def _walk(patterns: Iterable[Any], prefix: str) -> Iterator[tuple[str, tuple[str, ...], Any]]:
    for pattern in patterns:
        route = str(pattern.pattern)
        route = prefix + (route[1:] if prefix and route.startswith("^") else route)
        inner = getattr(pattern, "url_patterns", None)
        if inner is not None:  # include(...)
            yield from _walk(inner, route)
            continue
        view = pattern.callback
        view_class = getattr(view, "view_class", None)
        if view_class is None:
            methods: tuple[str, ...] = ("GET",)
        else:
            names = getattr(view_class, "http_method_names", ())
            methods = tuple(
                sorted(
                    name.upper()
                    for name in names
                    if name not in ("head", "options") and hasattr(view_class, name)
                )
            )
        if methods:
            yield route, methods, view


class DjangoRoutes:
    """``routes=`` resolver for ``WSGIRateLimitMiddleware`` around a whole Django WSGI app.

    Example::

        from django.core.wsgi import get_wsgi_application

        application = WSGIRateLimitMiddleware(
            get_wsgi_application(), limiter=limiter, routes=DjangoRoutes()
        )

    Args:
        urlconf: the URLconf module (or its dotted name); ``settings.ROOT_URLCONF`` by default.
    """

    def __init__(self, urlconf: Any = None) -> None:
        self.urlconf = urlconf

    def __call__(self, environ: WSGIEnvironment) -> tuple[Any, str | None]:
        return resolve_view(get_path_info(environ), self.urlconf)
