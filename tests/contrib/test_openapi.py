"""FastAPI: limited routes document their 429 and rate-limit headers in the OpenAPI schema."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("openapi_spec_validator")

import jsonschema
from fastapi import APIRouter, FastAPI
from openapi_spec_validator import validate
from starlette.testclient import TestClient

from ratemw import ConfigurationError, Limiter, RateLimitMiddleware, Rule
from ratemw.contrib.openapi import document_rate_limits
from ratemw.testing import FakeClock

HEADERS_10 = {
    "RateLimit-Policy": {"$ref": "#/components/headers/RateLimit-Policy"},
    "RateLimit": {"$ref": "#/components/headers/RateLimit"},
}
RETRY_AFTER = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
PROBLEM = {
    "application/problem+json": {"schema": {"$ref": "#/components/schemas/RateLimitProblem"}}
}


def build(limiter: Limiter, rules: list[Rule] | None = None) -> FastAPI:
    app = FastAPI()
    app.add_middleware(RateLimitMiddleware, limiter=limiter, rules=rules or [])

    @app.get("/search")
    @limiter.limit("5/minute;100/hour")
    async def search(q: str = "") -> dict[str, str]:
        return {"q": q}

    @app.get("/health")
    @limiter.exempt
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @limiter.limit("2/minute", methods=["POST"])
    async def upload() -> dict[str, bool]:
        return {"ok": True}

    app.get("/upload")(upload)  # one endpoint, two operations: only POST is limited
    app.post("/upload")(upload)

    router = APIRouter(prefix="/users")

    @router.get("/{user_id}")
    @limiter.limit("3/minute")
    async def user(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    app.include_router(router)
    document_rate_limits(app, limiter)
    return app


def responses(schema: dict[str, Any], path: str, method: str = "get") -> dict[str, Any]:
    result: dict[str, Any] = schema["paths"][path][method]["responses"]
    return result


def test_limited_operations_document_429_and_headers() -> None:
    schema = build(Limiter()).openapi()
    validate(schema)
    search = responses(schema, "/search")
    assert search["200"]["headers"] == HEADERS_10
    assert search["429"] == {
        "description": "Too Many Requests: over a rate limit (5/minute; 100/hour).",
        "headers": {**RETRY_AFTER, **HEADERS_10},
        "content": PROBLEM,
    }
    assert "429" in responses(schema, "/users/{user_id}")  # an included router
    assert "429" in responses(schema, "/upload", "post")


def test_unlimited_exempt_and_other_methods_are_left_alone() -> None:
    schema = build(Limiter()).openapi()
    assert set(responses(schema, "/health")) == {"200"}
    assert "headers" not in responses(schema, "/health")["200"]
    assert set(responses(schema, "/items/{item_id}")) == {"200", "422"}  # no limit at all
    assert set(responses(schema, "/upload", "get")) == {"200"}  # the limit is POST only
    assert "503" not in responses(schema, "/search")


def test_rules_defaults_and_application_limits_count_as_limits() -> None:
    rules_only = build(Limiter(), rules=[Rule("/items/*", "10/minute")]).openapi()
    assert responses(rules_only, "/items/{item_id}")["429"]["description"] == (
        "Too Many Requests: over a rate limit (10/minute)."
    )
    assert "429" not in responses(rules_only, "/health")
    defaults = build(Limiter(default_limits="60/minute")).openapi()
    assert "429" in responses(defaults, "/items/{item_id}")
    # As at run time, a route's own POST-only limit leaves GET to the defaults.
    assert "429" in responses(defaults, "/upload", "get")
    everything = build(Limiter(application_limits="1000/hour")).openapi()
    assert responses(everything, "/search")["429"]["description"] == (
        "Too Many Requests: over a rate limit (5/minute; 100/hour; 1000/hour)."
    )
    assert "429" not in responses(everything, "/health")
    for schema in (rules_only, defaults, everything):
        validate(schema)


@pytest.mark.parametrize(
    "pattern", ["/items/{item_id}", "/items/{item_id:int}", "/items/<int:item_id>"]
)
def test_a_template_rule_is_documented_and_enforced_alike(pattern: str) -> None:
    """A rule is documented only where it applies, and applies where it is documented."""
    limiter = Limiter(clock=FakeClock())
    app = build(limiter, rules=[Rule(pattern, "2/minute"), Rule("/nowhere/{x}", "1/minute")])
    schema = app.openapi()
    assert responses(schema, "/items/{item_id}")["429"]["description"] == (
        "Too Many Requests: over a rate limit (2/minute)."
    )
    assert not any("nowhere" in path for path in schema["paths"])
    client = TestClient(app)
    assert [client.get(f"/items/{n}").status_code for n in (1, 2, 3)] == [200, 200, 429]


@pytest.mark.parametrize(
    ("headers", "success", "too_many"),
    [
        pytest.param(
            "legacy",
            {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"},
            {"Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"},
            id="legacy",
        ),
        pytest.param(
            ["draft-6", "draft-10"],
            {
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
                "RateLimit-Policy",
                "RateLimit",
            },
            {
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
                "RateLimit-Policy",
                "RateLimit",
            },
            id="draft-6 and draft-10",
        ),
        pytest.param(False, None, {"Retry-After"}, id="no headers"),
    ],
)
def test_documented_headers_follow_the_header_modes(
    headers: Any, success: set[str] | None, too_many: set[str]
) -> None:
    schema = build(Limiter(headers=headers)).openapi()
    validate(schema)
    search = responses(schema, "/search")
    assert (set(search["200"]["headers"]) if "headers" in search["200"] else None) == (
        success if success else None
    )
    assert set(search["429"]["headers"]) == too_many
    assert set(schema["components"]["headers"]) == too_many


def test_failure_mode_deny_documents_the_503() -> None:
    schema = build(Limiter(failure_mode="deny")).openapi()
    validate(schema)
    unavailable = responses(schema, "/search")["503"]
    assert unavailable["headers"] == RETRY_AFTER
    assert unavailable["content"] == {
        "application/problem+json": {
            "schema": {"$ref": "#/components/schemas/RateLimitUnavailableProblem"}
        }
    }


def test_the_real_429_body_matches_the_documented_schema() -> None:
    limiter = Limiter(clock=FakeClock())
    app = build(limiter)
    schema = app.openapi()
    client = TestClient(app)
    statuses = [client.get("/search").status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    body = client.get("/search").json()
    problem = {
        **schema["components"]["schemas"]["RateLimitProblem"],
        "$defs": schema["components"]["schemas"],
    }
    problem["properties"]["policies"]["items"] = {"$ref": "#/$defs/RateLimitPolicyState"}
    jsonschema.validate(body, problem, cls=jsonschema.Draft202012Validator)
    assert set(body) == set(problem["properties"])


def test_the_schema_is_built_once_and_rebuilt_when_routes_change() -> None:
    limiter = Limiter()
    app = build(limiter)
    schema = app.openapi()
    assert app.openapi() is schema
    assert app.openapi_schema is schema

    @app.get("/late")
    @limiter.limit("1/second")
    async def late() -> dict[str, bool]:
        return {"late": True}

    app.openapi_schema = None  # what FastAPI users do to rebuild; new FastAPI also notices
    rebuilt = app.openapi()
    assert "429" in responses(rebuilt, "/late")
    validate(rebuilt)
    served = TestClient(app).get("/openapi.json").json()
    assert served["paths"]["/late"]["get"]["responses"]["429"]["content"] == PROBLEM


def test_documenting_twice_is_refused() -> None:
    limiter = Limiter()
    app = build(limiter)
    with pytest.raises(ConfigurationError, match="already called"):
        document_rate_limits(app, limiter)
    with pytest.raises(ConfigurationError, match=r"must be a ratemw\.Limiter"):
        document_rate_limits(FastAPI(), object())  # type: ignore[arg-type]


def test_the_middleware_documents_a_fastapi_app_by_itself() -> None:
    limiter = Limiter()
    app = FastAPI()
    app.add_middleware(RateLimitMiddleware, limiter=limiter, rules=[Rule("/ruled", "3/minute")])

    @app.get("/limited")
    @limiter.limit("5/minute")
    async def limited() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/ruled")
    async def ruled() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/free")
    async def free() -> dict[str, bool]:
        return {"ok": True}

    schema = TestClient(app).get("/openapi.json").json()  # the very first request
    assert "429" in schema["paths"]["/limited"]["get"]["responses"]
    assert schema["paths"]["/ruled"]["get"]["responses"]["429"]["description"].endswith(
        "(3/minute)."
    )
    assert "429" not in schema["paths"]["/free"]["get"]["responses"]
