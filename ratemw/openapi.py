"""FastAPI: document rate limits in the OpenAPI schema.

Every path operation a limit applies to gets a ``429`` response (an ``application/problem+json``
body: ``type``, ``title``, ``status``, ``detail``, ``instance``, ``violated-policies``,
``retry_after``, ``policies``) with its ``Retry-After`` header, and its successful (2xx)
responses and the 429 document the rate-limit headers the limiter sends (``RateLimit`` and
``RateLimit-Policy`` by default). With ``failure_mode="deny"`` a ``503`` is documented too.

A path operation is limited when it has decorator limits, a rule matches its path, or it gets
the limiter's default or application limits, and it is not exempt. Rules are matched against
the route's path template (``/items/{id}``), where ``*`` matches a path parameter too.

Example::

    from fastapi import FastAPI
    from ratemw import Limiter, RateLimitMiddleware
    from ratemw.openapi import document_rate_limits

    limiter = Limiter(default_limits="100/minute")
    app = FastAPI()
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    document_rate_limits(app, limiter)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ratemw.errors import ConfigurationError
from ratemw.limiter import Limiter
from ratemw.policy.groups import LimitGroup
from ratemw.policy.problems import PROBLEM_TITLE, PROBLEM_TYPE
from ratemw.policy.rules import Rule, check_rules

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "document_rate_limits",
    "install",
    "install_openapi",
    "limited_groups",
    "registrations",
]

PROBLEM_SCHEMA = "RateLimitProblem"
POLICY_SCHEMA = "RateLimitPolicyState"
UNAVAILABLE_SCHEMA = "RateLimitUnavailableProblem"
_REF = "#/components/"

# The headers each header mode sends: name -> (description, schema type).
_MODE_HEADERS: dict[str, dict[str, tuple[str, str]]] = {
    "draft-10": {
        "RateLimit-Policy": (
            "The quota policies that apply, as a Structured Field List "
            '(draft-ietf-httpapi-ratelimit-headers-10): `"per-minute";q=5;w=60`.',
            "string",
        ),
        "RateLimit": (
            "Each policy's remaining quota (`r`) and seconds until it has room again (`t`): "
            '`"per-minute";r=4;t=60`.',
            "string",
        ),
    },
    "draft-7": {
        "RateLimit": ("`limit=5, remaining=4, reset=60` (draft-7).", "string"),
        "RateLimit-Policy": ("`5;w=60` per policy (draft-7).", "string"),
    },
    "draft-6": {
        "RateLimit-Limit": ("The quota of the closest policy (draft-6).", "integer"),
        "RateLimit-Remaining": ("Requests left in that policy's window.", "integer"),
        "RateLimit-Reset": ("Seconds until that policy's quota is restored.", "integer"),
        "RateLimit-Policy": ("`5;w=60` per policy (draft-6).", "string"),
    },
    "legacy": {
        "X-RateLimit-Limit": ("The quota of the closest policy.", "integer"),
        "X-RateLimit-Remaining": ("Requests left in that policy's window.", "integer"),
        "X-RateLimit-Reset": ("When that policy's quota is restored, in epoch seconds.", "integer"),
    },
}
_RETRY_AFTER = (
    "Seconds to wait before the same request is admitted (rounded up, at least 1). Absent "
    "when the request's cost can never fit the quota.",
    "integer",
)


def _nullable_integer(openapi_version: str) -> dict[str, Any]:
    if openapi_version.startswith("3.0"):
        return {"type": "integer", "nullable": True}
    return {"type": ["integer", "null"]}


def _schemas(openapi_version: str) -> dict[str, Any]:
    policy = {
        "type": "object",
        "required": ["name", "quota", "unit", "window", "remaining", "reset"],
        "properties": {
            "name": {"type": "string", "examples": ["per-minute"]},
            "quota": {"type": "integer", "minimum": 1},
            "unit": {"type": "string", "examples": ["requests"]},
            "window": {"type": "integer", "description": "Window length in seconds."},
            "remaining": {"type": "integer", "minimum": 0},
            "reset": {
                **_nullable_integer(openapi_version),
                "description": "Seconds until this policy has room for the request again; "
                "null when the request's cost can never fit.",
            },
        },
    }
    problem = {
        "type": "object",
        "description": "RFC 9457 problem details for a request over its rate limit.",
        "required": [
            "type",
            "title",
            "status",
            "detail",
            "instance",
            "violated-policies",
            "policies",
        ],
        "properties": {
            "type": {"type": "string", "format": "uri", "examples": [PROBLEM_TYPE]},
            "title": {"type": "string", "examples": [PROBLEM_TITLE]},
            "status": {"type": "integer", "enum": [429]},
            "detail": {
                "type": "string",
                "examples": [
                    "Rate limit exceeded: 5 requests per 1 minute on GET /search. "
                    "Try again in 17 seconds."
                ],
            },
            "instance": {"type": "string", "examples": ["/search"]},
            "violated-policies": {"type": "array", "items": {"type": "string"}},
            "retry_after": {
                "type": "integer",
                "minimum": 1,
                "description": "Equal to the Retry-After header.",
            },
            "policies": {"type": "array", "items": {"$ref": f"{_REF}schemas/{POLICY_SCHEMA}"}},
        },
    }
    unavailable = {
        "type": "object",
        "description": "RFC 9457 problem details: rate limits cannot be checked right now.",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "format": "uri"},
            "title": {"type": "string"},
            "status": {"type": "integer", "enum": [503]},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "retry_after": {"type": "integer", "minimum": 1},
        },
    }
    return {POLICY_SCHEMA: policy, PROBLEM_SCHEMA: problem, UNAVAILABLE_SCHEMA: unavailable}


def _header(description: str, kind: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": kind}}


def _header_names(limiter: Limiter) -> list[str]:
    names: list[str] = []
    for mode in limiter.settings.header_modes:
        names.extend(n for n in _MODE_HEADERS[mode] if n not in names)
    return names


def _components(schema: dict[str, Any], limiter: Limiter) -> None:
    components = schema.setdefault("components", {})
    version = str(schema.get("openapi", "3.1.0"))
    for name, body in _schemas(version).items():
        components.setdefault("schemas", {}).setdefault(name, body)
    headers = components.setdefault("headers", {})
    headers.setdefault("Retry-After", _header(*_RETRY_AFTER))
    for mode in limiter.settings.header_modes:
        for name, (description, kind) in _MODE_HEADERS[mode].items():
            headers.setdefault(name, _header(description, kind))


def _refs(names: Iterable[str]) -> dict[str, Any]:
    return {name: {"$ref": f"{_REF}headers/{name}"} for name in names}


def _policies_text(groups: list[LimitGroup]) -> str:
    texts: list[str] = []
    for group in groups:
        if isinstance(group.limit, str):
            texts.extend(part.strip() for part in group.limit.split(";") if part.strip())
        else:
            texts.append("computed per request")
    return "; ".join(dict.fromkeys(texts))


def _document(operation: dict[str, Any], limiter: Limiter, groups: list[LimitGroup]) -> None:
    responses = operation.setdefault("responses", {})
    header_names = _header_names(limiter)
    for status, response in responses.items():
        if header_names and str(status).startswith("2"):
            response.setdefault("headers", {}).update(_refs(header_names))
    too_many = responses.setdefault("429", {})
    too_many.setdefault(
        "description", f"Too Many Requests: over a rate limit ({_policies_text(groups)})."
    )
    too_many.setdefault("headers", {}).update(_refs(["Retry-After", *header_names]))
    too_many.setdefault("content", {}).setdefault(
        "application/problem+json", {"schema": {"$ref": f"{_REF}schemas/{PROBLEM_SCHEMA}"}}
    )
    if limiter.settings.failure_mode == "deny":
        unavailable = responses.setdefault("503", {})
        unavailable.setdefault(
            "description", "Service Unavailable: rate limits cannot be checked right now."
        )
        unavailable.setdefault("headers", {}).update(_refs(["Retry-After"]))
        unavailable.setdefault("content", {}).setdefault(
            "application/problem+json",
            {"schema": {"$ref": f"{_REF}schemas/{UNAVAILABLE_SCHEMA}"}},
        )


# -- which operations are limited ---------------------------------------------------------------


def _api_routes(app: FastAPI) -> Iterator[tuple[str, Iterable[str], Any]]:
    """(path template, methods, endpoint) of each path operation, included routers too."""
    from fastapi.routing import APIRoute

    try:  # FastAPI >= 0.16x includes routers lazily; this walks them as get_openapi does.
        from fastapi.routing import iter_route_contexts  # type: ignore[attr-defined, unused-ignore]
    except ImportError:  # pragma: no cover - older FastAPI flattens included routers
        routes: Iterable[Any] = app.routes
    else:
        routes = iter_route_contexts(app.routes)
    for route in routes:
        original = getattr(route, "original_route", route)
        if isinstance(original, APIRoute) and route.include_in_schema:
            yield route.path_format, route.methods or (), route.endpoint


def registrations(app: FastAPI, limiter: Limiter) -> list[dict[str, Any]]:
    """The keyword arguments of each ``app.add_middleware(RateLimitMiddleware, limiter=...)``
    made with ``limiter`` (the middleware class is recognised by its ``ratemw_adapter`` mark,
    so this module need not import it)."""
    return [
        kwargs
        for middleware in getattr(app, "user_middleware", ())
        if getattr(getattr(middleware, "cls", None), "ratemw_adapter", False)
        and (kwargs := getattr(middleware, "kwargs", {})).get("limiter") is limiter
    ]


def _middleware_rules(app: FastAPI, limiter: Limiter) -> tuple[Rule, ...]:
    """The ``rules=`` given to ``app.add_middleware(RateLimitMiddleware, limiter=limiter)``."""
    return tuple(rule for kwargs in registrations(app, limiter) for rule in kwargs.get("rules", ()))


def limited_groups(
    limiter: Limiter, endpoint: Any, template: str, method: str, rules: tuple[Rule, ...] = ()
) -> list[LimitGroup]:
    """The limit groups that apply to ``method`` on a route (empty: not limited)."""
    plan = limiter.engine.plan(endpoint, template, template, method, rules, from_template=True)
    return [g for g in plan.groups if g.applies_to(method)]


def _add_rate_limits(
    schema: dict[str, Any], app: FastAPI, limiter: Limiter, rules: tuple[Rule, ...]
) -> None:
    paths = schema.get("paths", {})
    documented = False
    for template, methods, endpoint in _api_routes(app):
        for method in methods:
            operation = paths.get(template, {}).get(method.lower())
            if operation is None:
                continue
            groups = limited_groups(limiter, endpoint, template, method.upper(), rules)
            if groups:
                _document(operation, limiter, groups)
                documented = True
    if documented:
        _components(schema, limiter)


def document_rate_limits(app: FastAPI, limiter: Limiter, *, rules: Iterable[Rule] = ()) -> None:
    """Document ``limiter``'s rate limits in ``app``'s OpenAPI schema.

    Wraps ``app.openapi`` (the schema is still built once and cached, as FastAPI does). The
    ``rules=`` given to ``app.add_middleware(RateLimitMiddleware, limiter=limiter, ...)`` are
    found on their own; pass ``rules`` for those of a middleware added some other way.

    Example::

        app.add_middleware(RateLimitMiddleware, limiter=limiter)
        document_rate_limits(app, limiter)

        schema = app.openapi()
        schema["paths"]["/search"]["get"]["responses"]["429"]

    Args:
        app: the FastAPI app.
        limiter: the limiter its middleware enforces.
        rules: extra ``Rule``s the middleware applies.
    """
    if not isinstance(limiter, Limiter):
        raise ConfigurationError(f"limiter must be a ratemw.Limiter, got {limiter!r}")
    extra = check_rules(rules)
    documented_by = getattr(app.openapi, "_ratemw_documented", False)
    if documented_by == "middleware" and not extra:
        return  # the middleware did it on the first request, with the same limits
    if documented_by:
        raise ConfigurationError("document_rate_limits() was already called on this app")
    install(app, limiter, extra, by="document_rate_limits")


def install(app: FastAPI, limiter: Limiter, extra: tuple[Rule, ...], *, by: str) -> None:
    """Wrap ``app.openapi`` so the schema documents ``limiter``'s limits (see above)."""
    original = app.openapi
    documented: list[dict[str, Any]] = []  # the schema last documented

    def openapi() -> dict[str, Any]:
        cached: dict[str, Any] | None = app.openapi_schema
        if cached is not None and documented and documented[0] is cached:
            return cached
        schema = original()
        _add_rate_limits(schema, app, limiter, _middleware_rules(app, limiter) + extra)
        app.openapi_schema = schema
        documented[:] = [schema]
        return schema

    openapi._ratemw_documented = by  # type: ignore[attr-defined]
    app.openapi = openapi  # type: ignore[method-assign]


install_openapi = document_rate_limits
