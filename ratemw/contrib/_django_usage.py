"""The usage endpoint (``ratemw.usage``) as a Django view."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpResponse  # type: ignore[import-untyped]
from starlette.requests import Request

from ratemw._environ import wsgi_scope
from ratemw.contrib._django_settings import current
from ratemw.engine.plans import NO_ROUTE
from ratemw.routes.django import resolve_view, templates
from ratemw.usage import entry, parse_query

__all__ = ["usage_view"]


def usage_view(request: Any) -> Any:
    """A Django view reporting the caller's own standing under the routes' limits, counting
    nothing (see ``ratemw.usage``); the middleware exempts it from every limit.

    Example (``urls.py``)::

        from ratemw.contrib.django import usage_view

        urlpatterns = [..., path("rate_limit", usage_view)]
    """
    asked = parse_query(request.GET)
    if isinstance(asked, str):
        body = {"type": "about:blank", "title": "Bad Request", "status": 400, "detail": asked}
        return _json(body, 400, "application/problem+json")
    path, method = asked
    limiter = current().limiter
    engine = limiter.engine
    urlconf = getattr(request, "urlconf", None)
    rows = []
    if path is not None:
        view, route = resolve_view(path, urlconf)
        plan = engine.plan(view, route, path, method)
        rows.append((path if plan.template == NO_ROUTE else plan.template, method, plan, path))
    else:
        for template, methods, view in templates(urlconf):
            for each in methods:
                plan = engine.plan(view, template, "/" + template, each, from_template=True)
                if plan.entries:
                    rows.append((template, each, plan, "/" + template))
    entries = []
    for template, each, plan, target in rows:
        scope = wsgi_scope(request.META, each, target)
        scope["django.request"] = request
        scope["django.async"] = False
        outcome = engine.decide(plan, Request(scope), each, target, op="peek")
        decision = outcome.exceeded.decision if outcome.exceeded is not None else outcome.explain()
        if decision is not None and decision.policies:
            entries.append(entry(template, each, decision))
    return _json({"routes": entries}, 200, "application/json")


def _json(body: Any, status: int, content_type: str) -> Any:
    response = HttpResponse(json.dumps(body), status=status, content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response
