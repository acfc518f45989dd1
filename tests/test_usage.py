"""The usage endpoint: a caller's own standing under a route's limits, counting nothing.

Starlette and FastAPI (``UsageEndpoint``), Flask (``usage_view``), memory and Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from ratemw import ConfigurationError, Limiter, RateLimitMiddleware, Rule, keys
from ratemw.testing import FakeClock
from ratemw.usage import MAX_PATH, UsageEndpoint, WSGIUsageEndpoint
from tests.conftest import parse_sf_list
from tests.redis_servers import RedisServer

KEY = {"X-API-Key": "alice"}


async def ok(request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


def starlette_app(limiter: Limiter, *, middleware: bool = True) -> Starlette:
    """``/search`` 5/minute;100/hour; ``/items/{item_id:int}`` 2/minute; ``/static/...`` by a
    middleware rule; ``/health`` exempt; the rest the defaults; a WebSocket route."""

    async def item(request: Any) -> PlainTextResponse:
        return PlainTextResponse("item")

    async def health(request: Any) -> PlainTextResponse:
        return PlainTextResponse("up")

    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close()

    routes = [
        Route("/search", limiter.limit("5/minute;100/hour")(ok), methods=["GET", "POST"]),
        Route("/items/{item_id:int}", limiter.limit("2/minute")(item)),
        Route("/health", limiter.exempt(health)),
        Route("/other", _copy()),
        Mount("/static", routes=[Route("/logo.png", _copy())]),
        WebSocketRoute("/chat", limiter.limit("3/minute")(chat)),
        Route("/rate_limit", UsageEndpoint(limiter)),
    ]
    app = Starlette(routes=routes)
    if middleware:
        app.add_middleware(
            RateLimitMiddleware, limiter=limiter, rules=[Rule("/static/*", "30/minute")]
        )
    return app


def _copy() -> Any:
    async def endpoint(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return endpoint


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock: FakeClock) -> Limiter:
    return Limiter(
        clock=clock,
        key=keys.header("X-API-Key"),
        default_limits="20/minute",
        application_limits="1000/hour",
    )


@pytest.fixture
def client(limiter: Limiter) -> Iterator[TestClient]:
    with TestClient(starlette_app(limiter), headers=KEY) as client:
        yield client


def routes_of(client: Any, **query: str) -> list[dict[str, Any]]:
    response = client.get("/rate_limit", params=query)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    found: list[dict[str, Any]] = response.json()["routes"]
    return found


def numbers(route: dict[str, Any]) -> list[tuple[str, int, int, int]]:
    return [(p["name"], p["quota"], p["remaining"], p["reset"]) for p in route["policies"]]


# -- one route ------------------------------------------------------------------------------


def test_a_route_reports_what_its_next_request_then_shows(
    client: TestClient, clock: FakeClock
) -> None:
    (before,) = routes_of(client, path="/search")
    assert (before["route"], before["method"], before["allowed"]) == ("/search", "GET", True)
    assert [(p["name"], p["remaining"]) for p in before["policies"]] == [
        ("per-minute", 5), ("per-hour", 100), ("app-per-hour", 1000)
    ]  # fmt: skip
    for n in range(5):
        clock.advance(3)
        response = client.get("/search")
        assert response.status_code == 200
        header = parse_sf_list(response.headers["ratelimit"])
        (now,) = routes_of(client, path="/search")
        # What the usage endpoint says now is what the response's headers said: the request
        # took its one unit, the endpoint took none.
        assert numbers(now) == [
            (name, quota, params["r"], params["t"])
            for (name, params), quota in zip(header, (5, 100, 1000), strict=True)
        ]
        assert now["policies"][0]["remaining"] == 4 - n
    (spent,) = routes_of(client, path="/search")
    assert (spent["allowed"], spent["retry_after"]) == (False, 48)  # the window began at 3 s
    refused = client.get("/search")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "48"


def test_the_route_a_path_reaches_and_its_method(client: TestClient) -> None:
    client.get("/items/7")
    (item,) = routes_of(client, path="/items/12")  # another id: the same bucket
    assert item["route"] == "/items/{item_id}"
    first = item["policies"][0]
    assert (first["name"], first["remaining"]) == ("per-minute", 1)
    (post,) = routes_of(client, path="/search", method="post")
    assert post["method"] == "POST"
    (static,) = routes_of(client, path="/static/logo.png")
    assert static["policies"][0]["quota"] == 30  # the middleware's rule applies
    assert routes_of(client, path="/health") == []  # exempt: no limit
    (unknown,) = routes_of(client, path="/nowhere")  # the defaults apply to a 404 too
    assert unknown["route"] == "/nowhere"
    (chat,) = routes_of(client, path="/chat", method="WEBSOCKET")
    assert chat["policies"][0]["quota"] == 3


def test_every_route_at_once(client: TestClient) -> None:
    found = {(r["route"], r["method"]): r for r in routes_of(client)}
    assert set(found) == {
        ("/search", "GET"), ("/search", "POST"), ("/items/{item_id}", "GET"),
        ("/other", "GET"), ("/static/logo.png", "GET"), ("/chat", "WEBSOCKET"),
    }  # fmt: skip
    assert found[("/static/logo.png", "GET")]["policies"][0]["quota"] == 30
    assert found[("/other", "GET")]["policies"][0]["quota"] == 20


def test_the_endpoint_counts_nothing_and_is_not_counted(
    client: TestClient, limiter: Limiter
) -> None:
    client.get("/search")
    for _ in range(300):
        routes_of(client)
        routes_of(client, path="/search")
    (search,) = routes_of(client, path="/search")
    assert [p["remaining"] for p in search["policies"]] == [4, 99, 999]


def test_a_caller_sees_only_its_own_standing(client: TestClient) -> None:
    for _ in range(3):
        client.get("/search")
    (mine,) = routes_of(client, path="/search")
    (theirs,) = routes_of(client, path="/search", key="alice")  # no way to name another
    assert mine == theirs
    bob = client.get("/rate_limit", params={"path": "/search"}, headers={"X-API-Key": "bob"})
    assert [p["remaining"] for p in bob.json()["routes"][0]["policies"]] == [5, 100, 1000]


@pytest.mark.parametrize(
    "query",
    [
        {"path": "search"},
        {"path": "/" + "x" * MAX_PATH},
        {"path": "/a\x00b"},
        {"path": "/a?b"},
        {"method": "FETCH"},
        {"method": "G" * 10_000},
    ],
    ids=lambda q: repr(q)[:40],
)
def test_a_bad_query_is_a_400_problem(client: TestClient, query: dict[str, str]) -> None:
    response = client.get("/rate_limit", params=query)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 400


def test_odd_but_valid_paths(client: TestClient) -> None:
    for path in ("/items/{item_id:int}", "/items/-1", "/%2e%2e/search", "/café", "//search"):
        assert client.get("/rate_limit", params={"path": path}).status_code == 200


def test_without_the_middleware_it_still_reports(limiter: Limiter) -> None:
    with TestClient(starlette_app(limiter, middleware=False), headers=KEY) as client:
        (search,) = routes_of(client, path="/search")
        assert search["policies"][0]["remaining"] == 5
        (static,) = routes_of(client, path="/static/logo.png")
        assert static["policies"][0]["quota"] == 20  # no middleware, no rule: the default


def test_a_limiter_is_required() -> None:
    with pytest.raises(ConfigurationError, match="Limiter"):
        UsageEndpoint("limiter")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="Limiter"):
        WSGIUsageEndpoint(None)  # type: ignore[arg-type]


def test_many_calls_leave_the_counts_unchanged(limiter: Limiter) -> None:
    """Straight through the ASGI app (no test client): 100,000 calls."""
    app = starlette_app(limiter)
    scope = {
        "type": "http", "method": "GET", "path": "/rate_limit", "raw_path": b"/rate_limit",
        "query_string": b"path=/search", "root_path": "", "scheme": "http",
        "headers": [(b"x-api-key", b"alice")], "client": ("192.0.2.1", 1),
        "server": ("test", 80), "http_version": "1.1", "asgi": {"version": "3.0"},
    }  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sent.append(message)

    async def calls(n: int) -> None:
        for _ in range(n):
            await app(dict(scope), receive, send)

    before = limiter.peek("alice", "5/minute", scope=None)
    started = time.perf_counter()
    asyncio.run(calls(100_000))
    elapsed = time.perf_counter() - started
    assert len(sent) == 100_000 and sent[-1]["body"] == sent[0]["body"]
    assert b'"remaining":5' in sent[-1]["body"]
    assert limiter.peek("alice", "5/minute") == before
    print(f"100,000 usage calls: {elapsed:.1f} s")


# -- Redis ----------------------------------------------------------------------------------


def test_on_redis_the_stored_counts_do_not_change(redis_standalone_clean: RedisServer) -> None:
    limiter = Limiter(storage=redis_standalone_clean.url, key=keys.header("X-API-Key"))
    redis = redis_standalone_clean.client()
    with TestClient(starlette_app(limiter), headers=KEY) as client:
        client.get("/search")
        client.get("/items/1")
        stored = {key: redis.dump(key) for key in redis.keys("*")}
        assert stored
        for _ in range(200):
            routes_of(client)
        (search,) = routes_of(client, path="/search")
        assert [p["remaining"] for p in search["policies"]] == [4, 99]
        assert {key: redis.dump(key) for key in redis.keys("*")} == stored


# -- Flask ------------------------------------------------------------------------------------


def test_flask_usage_view(clock: FakeClock) -> None:
    flask = pytest.importorskip("flask")
    from ratemw.contrib.flask import init_app, usage_view

    limiter = Limiter(clock=clock, key=keys.header("X-API-Key"), default_limits="20/minute")
    app = flask.Flask(__name__)
    app.add_url_rule("/search", "search", limiter.limit("5/minute")(lambda: "ok"))
    app.add_url_rule(
        "/items/<int:item_id>", "item", limiter.limit("2/minute")(lambda item_id: "item")
    )
    app.add_url_rule("/rate_limit", "rate_limit", usage_view(limiter))
    init_app(app, limiter)
    client = app.test_client()
    response = client.get("/search", headers=KEY)
    header = parse_sf_list(response.headers["RateLimit"])
    usage = client.get("/rate_limit?path=/search", headers=KEY)
    assert usage.status_code == 200
    (search,) = usage.get_json()["routes"]
    assert numbers(search) == [("per-minute", 5, header[0][1]["r"], header[0][1]["t"])]
    listed = client.get("/rate_limit", headers=KEY).get_json()["routes"]
    assert {(r["route"], r["method"]) for r in listed} == {
        ("/search", "GET"), ("/items/<int:item_id>", "GET"),
        ("/static/<path:filename>", "GET"),  # Flask's own: the default limit applies
    }  # fmt: skip
    for _ in range(50):
        client.get("/rate_limit", headers=KEY)
    assert (
        client.get("/rate_limit?path=/search", headers=KEY).get_json()["routes"][0]["policies"][0][
            "remaining"
        ]
        == 4
    )
    bad = client.get("/rate_limit?path=nope", headers=KEY)
    assert (bad.status_code, bad.mimetype) == (400, "application/problem+json")
