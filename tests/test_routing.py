"""A request's limits follow the app's routing, whatever the request looks like.

The middleware plans a request by the route it will reach, and caches that plan. The plan
must depend on everything the app routes by (the host, the root path), never fail where the
app would answer 404, and rules must match the way the app routes. A limiter installed twice
counts a request once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Host, Match, Mount, Route
from starlette.testclient import TestClient

from ratemw import ConfigurationError, Limiter, RateLimitMiddleware, Rule, WSGIRateLimitMiddleware
from ratemw.testing import FakeClock
from tests.conftest import call


async def ok(request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


def asgi_get(
    app: Any, path: str, *, host: str = "testserver", root_path: str = "", method: str = "GET"
) -> tuple[int, list[tuple[bytes, bytes]]]:
    """One request straight through ASGI; an exception escaping is a 500."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": root_path + path, "raw_path": (root_path + path).encode(),
        "query_string": b"", "root_path": root_path, "headers": [(b"host", host.encode())],
        "client": ("192.0.2.1", 50000), "server": ("testserver", 80),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> tuple[int, list[tuple[bytes, bytes]]]:
        try:
            await app(scope, receive, send)
        except Exception:
            return 500, []
        start = next(m for m in sent if m["type"] == "http.response.start")
        return start["status"], list(start.get("headers", []))

    return asyncio.run(run())


def status(app: Any, path: str, **options: Any) -> int:
    return asgi_get(app, path, **options)[0]


def header_values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [value for key, value in headers if key == name]


# -- what the plan depends on ----------------------------------------------------------------


def test_host_routed_apps_plan_each_host_apart(clock: FakeClock) -> None:
    """Once ``www`` was planned, ``api``'s limit on the same path must still apply."""
    limiter = Limiter(clock=clock)
    limited = limiter.limit("3/minute")(lambda request: PlainTextResponse("api"))
    api = Starlette(routes=[Route("/search", limited)])
    www = Starlette(routes=[Route("/search", ok)])
    app = Starlette(routes=[Host("api.example.com", api), Host("www.example.com", www)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    assert status(app, "/search", host="www.example.com") == 200
    codes = [status(app, "/search", host="api.example.com") for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    assert status(app, "/search", host="www.example.com") == 200  # still unlimited there


def test_unknown_paths_under_a_mount_of_routes_are_404_not_500(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, default_limits="100/minute")
    app = Starlette(routes=[Mount("/api", routes=[Route("/items", ok)])])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    assert status(app, "/api/nothing-here") == 404
    assert status(app, "/api/items") == 200


def test_unhashable_endpoints_can_be_declared_on(clock: FakeClock) -> None:
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await PlainTextResponse("ok")(scope, receive, send)

    limiter = Limiter(clock=clock)
    endpoint = limiter.limit("1/minute")(Unhashable())
    app = Starlette(routes=[Route("/", endpoint)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    assert [status(app, "/") for _ in range(2)] == [200, 429]


class ByHeader(BaseRoute):
    """A route of the app's own that routes by a header: no plan may be cached by path."""

    def __init__(self, header: bytes, endpoint: Any) -> None:
        self.header = header
        self.endpoint = endpoint
        self.path = "/"

    def matches(self, scope: Any) -> tuple[Match, dict[str, Any]]:
        found = any(name == self.header for name, _ in scope.get("headers", []))
        return (Match.FULL, {"endpoint": self.endpoint}) if found else (Match.NONE, {})

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("by header")(scope, receive, send)


def test_routes_of_unknown_kinds_are_planned_afresh(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)
    limited = limiter.limit("2/minute")(lambda request: PlainTextResponse("beta"))
    app = Starlette(routes=[ByHeader(b"x-beta", limited), Route("/", ok)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    client = TestClient(app)
    assert client.get("/").status_code == 200  # planned by the plain route: unlimited
    beta = [client.get("/", headers={"x-beta": "1"}).status_code for _ in range(3)]
    assert beta == [200, 200, 429]


# -- rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param("/items/{item_id}", id="a Starlette template"),
        pytest.param("/items/{item_id:int}", id="with a converter"),
        pytest.param("/items/<int:item_id>", id="a Flask template"),
        pytest.param("/items/*", id="a wildcard"),
    ],
)  # fmt: skip
def test_rules_written_as_route_templates_match(clock: FakeClock, pattern: str) -> None:
    limiter = Limiter(clock=clock)
    app = Starlette(routes=[Route("/items/{item_id:int}", ok)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter, rules=[Rule(pattern, "2/minute")])
    assert [status(app, f"/items/{n}") for n in (1, 2, 3)] == [200, 200, 429]


@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param("items/*", id="no leading slash"),
        pytest.param("/items/{item_id", id="an unclosed brace"),
        pytest.param("/items/<int:item_id", id="an unclosed angle bracket"),
        pytest.param("/items/{1d}", id="a parameter that is no name"),
        pytest.param("/items/{id:nonsense}", id="an unknown converter"),
        pytest.param("/items /x", id="white space"),
    ],
)  # fmt: skip
def test_rules_that_can_never_match_are_refused_at_start_up(pattern: str) -> None:
    with pytest.raises(ConfigurationError, match="rule path"):
        Rule(pattern, "1/minute")


def test_rules_match_relative_to_the_root_path(clock: FakeClock) -> None:
    """uvicorn --root-path /svc: the app routes /api/x as /api/x, and so do rules."""
    limiter = Limiter(clock=clock)
    app = Starlette(routes=[Route("/api/{name}", ok)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter, rules=[Rule("/api/*", "2/minute")])
    codes = [status(app, f"/api/{n}", root_path="/svc") for n in "abc"]
    assert codes == [200, 200, 429]


def test_rules_match_relative_to_script_name(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    wrapped = WSGIRateLimitMiddleware(app, limiter=limiter, rules=[Rule("/api/*", "2/minute")])
    codes = [call(wrapped, f"/api/{n}", SCRIPT_NAME="/svc").status for n in "abc"]
    assert codes == [200, 200, 429]


# -- installed twice -------------------------------------------------------------------------


def test_the_same_limiter_installed_twice_counts_once(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, default_limits="2/minute")
    app = Starlette(routes=[Route("/", ok)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    assert [status(app, "/") for _ in range(3)] == [200, 200, 429]


def test_an_app_and_its_mounted_sub_app_write_the_headers_once(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, default_limits="5/minute")
    sub = Starlette(routes=[Route("/x", ok)])
    sub.add_middleware(RateLimitMiddleware, limiter=limiter)
    app = Starlette(routes=[Mount("/sub", sub)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    code, headers = asgi_get(app, "/sub/x")
    assert code == 200
    assert header_values(headers, b"ratelimit") == [b'"per-minute";r=4;t=60']
    assert len(header_values(headers, b"ratelimit-policy")) == 1


def test_a_reused_scope_is_limited_every_time(clock: FakeClock) -> None:
    """Marking a scope must not make the next request that reuses it pass unlimited."""
    limiter = Limiter(clock=clock, default_limits="2/minute")
    app = RateLimitMiddleware(Starlette(routes=[Route("/", ok)]), limiter=limiter)
    scope = {
        "type": "http", "method": "GET", "path": "/", "root_path": "", "headers": [],
        "query_string": b"", "client": ("192.0.2.1", 1), "server": ("t", 80),
    }  # fmt: skip
    codes: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            codes.append(message["status"])

    async def three() -> None:
        for _ in range(3):
            await app(scope, receive, send)

    asyncio.run(three())
    assert codes == [200, 200, 429]


def test_wsgi_installed_twice_counts_once_and_a_reused_environ_is_limited(
    clock: FakeClock,
) -> None:
    limiter = Limiter(clock=clock, default_limits="2/minute")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    twice = WSGIRateLimitMiddleware(WSGIRateLimitMiddleware(app, limiter=limiter), limiter=limiter)
    assert [call(twice, "/").status for _ in range(3)] == [200, 200, 429]
    once = WSGIRateLimitMiddleware(app, limiter=Limiter(clock=clock, default_limits="2/minute"))
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "192.0.2.1"}
    codes: list[str] = []
    for _ in range(3):
        once(environ, lambda status, headers, exc_info=None: codes.append(status))
    assert [code[:3] for code in codes] == ["200", "200", "429"]


# -- HEAD and GET ----------------------------------------------------------------------------


def test_head_counts_as_get_when_each_method_counts_apart(clock: FakeClock) -> None:
    """Alternating HEAD and GET must not double a per-method quota."""
    limiter = Limiter(clock=clock)
    app = Starlette(routes=[Route("/", limiter.limit("2/minute", per_method=True)(ok))])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    codes = [status(app, "/", method=m) for m in ("HEAD", "GET", "HEAD", "GET")]
    assert codes == [200, 200, 429, 429]
