"""Safe defaults: CORS preflights pass uncounted, health-probe paths can be exempt, HEAD
counts as GET. ASGI (Starlette), WSGI and Django."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from ratemw import ConfigurationError, Limiter, RateLimitMiddleware
from tests._served import ADAPTERS, served

PREFLIGHT = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}


async def ok(request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


def cors_app(limiter: Limiter) -> TestClient:
    """A route behind CORSMiddleware (which answers preflights), behind ratemw."""
    app = Starlette(routes=[Route("/api", ok, methods=["GET", "POST"]), Route("/healthz", ok)])
    app.add_middleware(CORSMiddleware, allow_origins=["https://app.example"], allow_methods=["*"])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    return TestClient(app)


def test_a_preflight_is_neither_counted_nor_refused() -> None:
    client = cors_app(Limiter(default_limits="2/minute"))
    assert all(client.options("/api", headers=PREFLIGHT).status_code == 200 for _ in range(10))
    assert [client.get("/api").status_code for _ in range(3)] == [200, 200, 429]
    # Over the limit, the browser's preflight still gets its answer (and no 429).
    preflight = client.options("/api", headers=PREFLIGHT)
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "ratelimit" not in preflight.headers


@pytest.mark.parametrize(
    "headers",
    [{}, {"Origin": "https://app.example"}, {"Access-Control-Request-Method": "POST"}],
    ids=["plain", "origin only", "method only"],
)
def test_an_options_that_is_not_a_preflight_counts(headers: dict[str, str]) -> None:
    client = cors_app(Limiter(default_limits="2/minute"))
    statuses = [client.options("/api", headers=headers).status_code for _ in range(2)]
    assert 429 not in statuses
    assert client.options("/api", headers=headers).status_code == 429
    assert client.get("/api").status_code == 429  # one bucket per route


def test_count_preflight_true_counts_them() -> None:
    client = cors_app(Limiter(default_limits="2/minute", count_preflight=True))
    statuses = [client.options("/api", headers=PREFLIGHT).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_preflights_pass_under_both_adapters(adapter: str) -> None:
    app = served(adapter, Limiter(default_limits="1/minute"))
    # The app's own answer (Starlette's router says 405 to OPTIONS), never a 429.
    first = app.statuses(5, method="OPTIONS", headers=PREFLIGHT)
    assert 429 not in first and len(set(first)) == 1
    assert app.statuses(2) == [200, 429]
    assert app.get(method="OPTIONS", headers=PREFLIGHT).status == first[0]
    assert app.statuses(2, method="OPTIONS") == [429, 429]  # plain OPTIONS: counted


def test_exempt_paths() -> None:
    limiter = Limiter(
        default_limits="1/minute",
        application_limits="3/hour",
        exempt_paths=["/healthz", "/ready*", "/status/{name}"],
    )

    app = Starlette(
        routes=[
            Route(path, ok)
            for path in ("/api", "/healthz", "/readyz", "/ready/deep", "/status/{name}")
        ]
    )
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    client = TestClient(app)
    for path in ("/healthz", "/readyz", "/ready/deep", "/status/db"):
        replies = [client.get(path) for _ in range(5)]
        assert [r.status_code for r in replies] == [200] * 5, path
        assert "ratelimit" not in replies[0].headers
    # Not counted against the application-wide limit either; other paths still are.
    assert [client.get("/api").status_code for _ in range(2)] == [200, 429]
    assert client.get("/healthz/").status_code in (200, 307, 404)  # not exempt: counted
    assert client.get("/status/a/b").status_code in (404, 429)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_exempt_paths_under_both_adapters(adapter: str) -> None:
    app = served(adapter, Limiter(default_limits="1/minute", exempt_paths=["/"]))
    assert app.statuses(3) == [200, 200, 200]


def test_exempt_paths_are_checked_at_start_up() -> None:
    for bad in ("/healthz", ["healthz"], ["/a b"], [5], ["/x/{"], None):
        with pytest.raises(ConfigurationError, match="exempt_paths"):
            Limiter(exempt_paths=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="count_preflight"):
        Limiter(count_preflight="no")  # type: ignore[arg-type]


def test_head_counts_as_get() -> None:
    limiter = Limiter()

    @limiter.limit("2/minute", methods=["GET"])
    async def page(request: Any) -> PlainTextResponse:
        return PlainTextResponse("page")

    app = Starlette(routes=[Route("/page", page)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    client = TestClient(app)
    assert [client.head("/page").status_code, client.get("/page").status_code] == [200, 200]
    assert client.head("/page").status_code == 429


def test_django_preflight_and_exempt_paths() -> None:
    from tests.contrib.django_setup import configure_django, project

    configure_django()
    from django.http import HttpResponse
    from django.test import Client
    from django.urls import path

    def view(request: Any) -> Any:
        return HttpResponse("ok")

    limiter = Limiter(default_limits="1/minute", exempt_paths=["/healthz/"])
    with project(limiter, path("api/", view), path("healthz/", lambda request: view(request))):
        client = Client()
        preflight = {
            "HTTP_ORIGIN": "https://a.example",
            "HTTP_ACCESS_CONTROL_REQUEST_METHOD": "GET",
        }
        assert [client.options("/api/", **preflight).status_code for _ in range(3)] == [200] * 3
        assert [client.get("/api/").status_code for _ in range(2)] == [200, 429]
        assert [client.get("/healthz/").status_code for _ in range(3)] == [200] * 3
