"""Flask integration: find a request's view before Flask routes it, and install the middleware.

Example::

    from flask import Flask
    from ratemw import Limiter
    from ratemw.contrib.flask import init_app

    app = Flask(__name__)
    limiter = Limiter(default_limits="100/minute")
    init_app(app, limiter)

    @app.get("/items/<int:item_id>")
    @limiter.limit("5/minute")        # one bucket for every item id
    def item(item_id: int): ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flask import Flask

from ratemw.errors import ConfigurationError
from ratemw.limiter import Limiter
from ratemw.policy.rules import Rule
from ratemw.routes.flask import FlaskRoutes
from ratemw.usage import WSGIUsageEndpoint
from ratemw.wsgi import WSGIExceededHandler, WSGIRateLimitMiddleware

__all__ = ["FlaskRoutes", "RateMW", "init_app", "usage_view"]

EXTENSION_NAME = "ratemw"


def init_app(
    app: Flask,
    limiter: Limiter,
    *,
    rules: Iterable[Rule] = (),
    handler: WSGIExceededHandler | None = None,
) -> WSGIRateLimitMiddleware:
    """Install ``WSGIRateLimitMiddleware`` with the Flask resolver on ``app.wsgi_app``.

    The middleware is also kept in ``app.extensions["ratemw"]``. Installing it twice on one
    app would count every request twice, so that raises ``ConfigurationError``.

    Example::

        limiter = Limiter(default_limits="100/minute")
        init_app(app, limiter, rules=[Rule("/static/*", "300/minute")])
    """
    if EXTENSION_NAME in app.extensions:
        raise ConfigurationError(f"ratemw is already installed on Flask app {app.name!r}")
    middleware = WSGIRateLimitMiddleware(
        app.wsgi_app, limiter=limiter, rules=rules, handler=handler, routes=FlaskRoutes(app)
    )
    app.wsgi_app = middleware  # type: ignore[method-assign]
    app.extensions[EXTENSION_NAME] = middleware
    return middleware


class RateMW:
    """The Flask extension pattern around ``init_app``, for app factories.

    Example::

        limiter = Limiter(default_limits="100/minute")
        ratemw_ext = RateMW(limiter=limiter)

        def create_app() -> Flask:
            app = Flask(__name__)
            ratemw_ext.init_app(app)
            return app
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        limiter: Limiter,
        rules: Iterable[Rule] = (),
        handler: WSGIExceededHandler | None = None,
    ) -> None:
        self.limiter = limiter
        self.rules = tuple(rules)
        self.handler = handler
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> WSGIRateLimitMiddleware:
        """Install the middleware on ``app`` (see ``init_app``)."""
        return init_app(app, self.limiter, rules=self.rules, handler=self.handler)


def usage_view(limiter: Limiter) -> Callable[[], WSGIUsageEndpoint]:
    """A Flask view reporting the caller's own standing, counting nothing (see
    ``ratemw.usage``); exempt from every limit.

    Example::

        app.add_url_rule("/rate_limit", "rate_limit", usage_view(limiter))
    """
    endpoint = WSGIUsageEndpoint(limiter)

    def rate_limit() -> WSGIUsageEndpoint:
        return endpoint  # Flask runs a returned WSGI app with the request's environ

    limiter.exempt(rate_limit)
    return rate_limit
