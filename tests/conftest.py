from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from http_sfv import List
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from ratemw import Limiter, RateLimitMiddleware
from ratemw.testing import FakeClock

pytest_plugins = ["tests.redis_servers"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def ok(request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


def make_client(
    limiter: Limiter,
    routes: list[Any] | None = None,
    decorate: Callable[[Any], Any] | None = None,
    **middleware: Any,
) -> TestClient:
    """A one-route Starlette app (``/``) behind the middleware, and its test client."""
    if routes is None:
        endpoint = decorate(ok) if decorate is not None else ok
        routes = [Route("/", endpoint)]
    app = Starlette(routes=routes)
    app.add_middleware(RateLimitMiddleware, limiter=limiter, **middleware)
    return TestClient(app)


def parse_sf_list(value: str) -> list[tuple[Any, dict[str, Any]]]:
    """Parse a Structured Field List (RFC 9651) with a real parser."""
    parsed = List()
    parsed.parse(value.encode("ascii"))
    return [(item.value, dict(item.params)) for item in parsed]
