"""One app served through either adapter, called the way a server calls it.

``served(adapter, limiter, endpoint)`` puts ``endpoint`` (already decorated with the
limiter's limits) at ``/`` behind ``RateLimitMiddleware`` ("asgi") or
``WSGIRateLimitMiddleware`` ("wsgi"). ``Served.get`` sends one request and answers what the
caller would see; an exception escaping the middleware is a 500, as a server would answer it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode
from wsgiref.util import setup_testing_defaults

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ratemw import Limiter, RateLimitMiddleware, WSGIRateLimitMiddleware

ADAPTERS = ("asgi", "wsgi")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def problem(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


async def _ok(request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


def _wsgi_ok(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


class Served:
    def __init__(self, adapter: str, limiter: Limiter, endpoint: Any, **options: Any) -> None:
        self.adapter = adapter
        self.endpoint = endpoint
        if adapter == "asgi":
            methods = ["GET", "POST", "PUT", "DELETE"]
            app = Starlette(routes=[Route("/", endpoint, methods=methods)])
            self.app: Any = RateLimitMiddleware(app, limiter=limiter, **options)
        else:

            def routes(environ: dict[str, Any]) -> tuple[Any, str | None]:
                return (endpoint, "/") if environ.get("PATH_INFO") == "/" else (None, None)

            self.app = WSGIRateLimitMiddleware(_wsgi_ok, limiter=limiter, routes=routes, **options)

    def get(
        self,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        *,
        method: str = "GET",
        client: str = "192.0.2.1",
        path: str = "/",
    ) -> Reply:
        query_string = urlencode(query or {})
        if self.adapter == "asgi":
            return self._asgi(method, path, query_string, headers or {}, client)
        return self._wsgi(method, path, query_string, headers or {}, client)

    def statuses(self, n: int, **request: Any) -> list[int]:
        return [self.get(**request).status for _ in range(n)]

    def _asgi(
        self, method: str, path: str, query: str, headers: dict[str, str], client: str
    ) -> Reply:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": query.encode(), "root_path": "",
            "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()],
            "client": (client, 50000), "server": ("testserver", 80),
        }  # fmt: skip
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def call() -> Reply:
            try:
                await self.app(scope, receive, send)
            except Exception:
                return Reply(500, {}, b"")
            start = next(m for m in sent if m["type"] == "http.response.start")
            body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
            names = {k.decode().lower(): v.decode("latin-1") for k, v in start["headers"]}
            return Reply(start["status"], names, body)

        return asyncio.run(call())

    def _wsgi(
        self, method: str, path: str, query: str, headers: dict[str, str], client: str
    ) -> Reply:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
            "REMOTE_ADDR": client, "REMOTE_PORT": "50000",
        }  # fmt: skip
        setup_testing_defaults(environ)
        for name, value in headers.items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(status: str, response_headers: Any, exc_info: Any = None) -> Any:
            started.append((status, response_headers))
            return lambda data: None

        try:
            result = self.app(environ, start_response)
            body = b"".join(result)
            getattr(result, "close", lambda: None)()
        except Exception:
            return Reply(500, {}, b"")
        status, response_headers = started[-1]
        names = {k.lower(): v for k, v in response_headers}
        return Reply(int(status[:3]), names, body)


def served(adapter: str, limiter: Limiter, endpoint: Any = _ok, **options: Any) -> Served:
    return Served(adapter, limiter, endpoint, **options)


def decorated(decorator: Callable[[Any], Any]) -> Any:
    """A fresh endpoint with ``decorator`` applied (a new function per test)."""

    async def endpoint(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return decorator(endpoint)
