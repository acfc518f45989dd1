"""A request's standing, for its endpoint: ``ratemw.current(request)``.

The middleware keeps its outcome on the request it decided (in the ASGI scope, the WSGI
environ, Django's ``request.META``). ``current`` reads it back for the endpoint: the
policies with their quota, remaining and reset, exactly as the response headers tell them,
and ``exceeded`` for a request let through over a ``block=False`` limit.

Example::

    @app.get("/search")
    @limiter.limit("100/hour", block=False)
    async def search(request: Request):
        standing = ratemw.current(request)
        if standing is not None and standing.exceeded:
            return cached_results()         # degrade instead of refusing
        ...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ratemw.engine import OUTCOME
from ratemw.policy.decision import Decision

__all__ = ["current"]


def current(request: Any) -> Decision | None:
    """The decision the middleware made for ``request``, or ``None`` where no limit applied.

    ``request`` is a Starlette or FastAPI ``Request`` (or ``WebSocket``), a Flask or
    Django request, or the ASGI scope or WSGI environ itself.
    """
    for holder in _holders(request):
        outcome = holder.get(OUTCOME)
        if outcome is not None:
            explained: Decision | None = outcome.explain()
            return explained
    return None


def _holders(request: Any) -> list[Mapping[str, Any]]:
    """Where the middleware may have kept the outcome: the request itself (a scope or an
    environ), Django's ``META``, werkzeug's ``environ``, Starlette's ``scope`` (Django's ASGI
    request has a ``scope`` too, but its middleware keeps the outcome in ``META``)."""
    if isinstance(request, Mapping):
        return [request]
    found = []
    for name in ("META", "environ", "scope"):
        holder = getattr(request, name, None)
        if isinstance(holder, Mapping):
            found.append(holder)
    return found
