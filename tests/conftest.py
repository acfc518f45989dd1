from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from wsgiref.util import setup_testing_defaults

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


# -- WSGI ---------------------------------------------------------------------------------------

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass
class Result:
    """A WSGI response: status, headers, the joined body, and every start_response call."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    calls: list[tuple[str, list[tuple[str, str]], Any]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[-1] if values else None


def environ_for(path: str = "/", method: str = "GET", **extra: Any) -> dict[str, Any]:
    environ: dict[str, Any] = {"REMOTE_ADDR": "192.0.2.1", "REMOTE_PORT": "50000"}
    environ.update(PATH_INFO=path, REQUEST_METHOD=method)
    setup_testing_defaults(environ)
    environ.update(extra)
    return environ


def call(app: WSGIApp, path: str = "/", method: str = "GET", **extra: Any) -> Result:
    """One request, served the way a WSGI server serves it (body joined, then closed)."""
    calls: list[tuple[str, list[tuple[str, str]], Any]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        calls.append((status, headers, exc_info))
        return lambda data: None

    result = app(environ_for(path, method, **extra), start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers, _ = calls[-1]
    return Result(int(status.split()[0]), headers, body, calls)
