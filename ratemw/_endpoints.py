"""Which limits apply to a request on a view its framework has wrapped, cached per request line.

Flask and Django route to wrappers: ``as_view()`` functions (the class, with its method
handlers, is in ``view_class``) and decorators made with ``functools.wraps``. The limits were
declared on whichever of these the user decorated, so that object is looked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ratemw.engine.decide import Plan
from ratemw.limiter import Limiter
from ratemw.engine.plans import cacheable
from ratemw.routes.starlette import Resolution
from ratemw.policy.rules import Rule

__all__ = ["APPLIED", "Planner", "plan_route"]

_PLAN_CACHE_SIZE = 4096

#: The limiters that already decided a request, in its ASGI scope or WSGI environ: the same
#: limiter installed twice in one stack (an app and its mounted sub-app, a middleware added
#: twice) counts the request once and writes its headers once.
APPLIED = "ratemw.limiters"


def plan_route(
    limiter: Limiter,
    endpoint: Any,
    template: str | None,
    path: str,
    method: str,
    rules: tuple[Rule, ...],
) -> Plan:
    """The plan for a route whose view may be wrapped by its framework.

    ``Limiter.plan`` looks behind ``as_view()`` functions and ``functools.wraps`` decorators.

    Example::

        plan = plan_route(limiter, login_required(item), "/items/<int:id>", path, "GET", ())
    """
    return limiter.plan(endpoint, template, path, method, rules)


class Planner:
    """Plans by request, cached: route resolution runs once per distinct request line. Every
    adapter (ASGI, WSGI, Django) keeps its plans in one.

    A request line with a part longer than ``MAX_CACHED_PATH`` characters (a path, a
    ``Host`` header, a made-up method) is planned afresh each time rather than kept.

    Example::

        planner = Planner(limiter, rules)
        cache_key = (method, environ.get("HTTP_HOST", ""), path)  # what routing depends on
        plan = planner.plan(cache_key, path, method, routes, environ)
    """

    def __init__(self, limiter: Limiter, rules: tuple[Rule, ...]) -> None:
        self.limiter = limiter
        self.rules = rules
        #: The plans kept, by cache key: an adapter may look here first (``plan`` on a miss).
        self.plans: dict[tuple[Any, ...], Plan] = {}
        limiter.watch_plans(self)

    def forget_plans(self) -> None:
        self.plans.clear()

    def plan(
        self,
        cache_key: tuple[Any, ...],
        path: str,
        method: str,
        resolve: Callable[..., tuple[Any, str | None] | Resolution],
        *args: Any,
    ) -> Plan:
        """The plan cached under ``cache_key``, planned on a miss.

        On a miss ``resolve(*args)`` finds the route: ``(endpoint, template)``, or a
        ``Resolution`` that may say the route cannot be cached by this key.
        """
        plan = self.plans.get(cache_key)
        if plan is None:
            found = resolve(*args)
            if isinstance(found, Resolution):
                endpoint, template, keep = found.endpoint, found.template, found.cacheable
            else:
                (endpoint, template), keep = found, True
            plan = plan_route(self.limiter, endpoint, template, path, method, self.rules)
            if not keep or not cacheable(cache_key):
                return plan
            if len(self.plans) >= _PLAN_CACHE_SIZE:
                self.plans.clear()
            self.plans[cache_key] = plan
            # Checked once stored: a change before this point is seen here, one after it
            # clears the cache (Limiter.watch_plans).
            if plan.generation != self.limiter.plan_generation:
                self.plans.pop(cache_key, None)
        return plan
