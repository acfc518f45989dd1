"""The Flask view a request will reach, matched before Flask routes it (werkzeug's URL map).

Flask is not imported here: the resolver is handed the app.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment
    from flask import Flask

__all__ = ["FlaskRoutes"]


class FlaskRoutes:
    """``routes=`` resolver for ``WSGIRateLimitMiddleware``: the Flask view a request reaches.

    Matches the app's URL map the way Flask will, and answers the view function (for
    class-based views Flask's ``as_view()`` function, whose ``view_class`` the middleware
    looks into) and the URL rule, so ``/items/<int:item_id>`` is one bucket. Requests no
    rule matches (404, 405, redirects) answer ``(None, None)``.

    Example::

        app.wsgi_app = WSGIRateLimitMiddleware(
            app.wsgi_app, limiter=limiter, routes=FlaskRoutes(app)
        )
    """

    def __init__(self, app: Flask) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment) -> tuple[Any, str | None]:
        app = self.app
        url_map = app.url_map
        # The same binding as Flask.create_url_adapter, so matching agrees with Flask's.
        server_name = app.config["SERVER_NAME"]
        subdomain: str | None = None
        if url_map.host_matching:
            server_name = None
        elif not app.subdomain_matching:
            subdomain = url_map.default_subdomain or ""
        adapter = url_map.bind_to_environ(environ, server_name=server_name, subdomain=subdomain)
        from werkzeug.exceptions import HTTPException

        try:
            rule, _ = adapter.match(return_rule=True)
        except HTTPException:  # NotFound, MethodNotAllowed, RequestRedirect: Flask answers
            return None, None
        return app.view_functions.get(rule.endpoint), rule.rule

    def templates(self) -> list[tuple[str, tuple[str, ...], Any]]:
        """(template, methods, view) of every rule of the app's URL map (``HEAD`` and
        ``OPTIONS``, which Flask adds to every rule, left out)."""
        app = self.app
        found = []
        for rule in app.url_map.iter_rules():
            view = app.view_functions.get(rule.endpoint)
            methods = tuple(sorted(set(rule.methods or ()) - {"HEAD", "OPTIONS"}))
            if view is not None and methods:
                found.append((rule.rule, methods, view))
        return found

    def catch_raised(self, answer: Callable[[Any], Any]) -> None:
        """Have Flask answer a ``RateLimitExceeded`` a view raises (``limiter.hit`` with
        ``raise_exceeded=True``) with ``answer(exc)``, a WSGI application: Flask would
        otherwise turn it into a 500 before the middleware could see it."""
        from ratemw.errors import RateLimitExceeded

        self.app.register_error_handler(RateLimitExceeded, answer)

    def request_context(self, environ: WSGIEnvironment) -> Any:
        """The app's request context for ``environ``: a ``handler=`` runs inside it, so it
        may use ``jsonify``, ``render_template`` or ``flask.request``."""
        return self.app.request_context(environ)
