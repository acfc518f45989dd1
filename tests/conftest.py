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


async def websocket_handshake(app: Any, path: str = "/ws") -> list[dict[str, Any]]:
    """A WebSocket handshake from a server without the denial-response extension: the
    messages the app sent."""
    scope = {
        "type": "websocket", "path": path, "headers": [], "query_string": b"",
        "client": ("192.0.2.1", 1), "server": ("test", 80), "scheme": "ws", "root_path": "",
        "subprotocols": [],
    }  # fmt: skip
    incoming = [{"type": "websocket.connect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop() if incoming else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def parse_sf_list(value: str) -> list[tuple[Any, dict[str, Any]]]:
    """Parse a Structured Field List (RFC 9651) with a real parser."""
    parsed = List()
    parsed.parse(value.encode("ascii"))
    return [(item.value, dict(item.params)) for item in parsed]
