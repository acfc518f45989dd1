"""The Django view a request will reach, and its URL pattern, resolved before Django runs it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core.handlers.wsgi import get_path_info  # type: ignore[import-untyped]
from django.urls import Resolver404, resolve  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["DjangoRoutes", "resolve_view"]


def resolve_view(path_info: str, urlconf: Any = None) -> tuple[Any, str | None]:
    """The view Django will route ``path_info`` to and its URL pattern (``None``s on 404)."""
    try:
        match = resolve(path_info, urlconf)
    except Resolver404:
        return None, None
    route = match.route
    return match.func, route if isinstance(route, str) else None


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
