"""Tricks a caller (or a misbehaving callable) tried against the newer features, each a
regression test: path spellings past rules and exempt paths, SCRIPT_NAME games, looks that
counted during an outage, key values that named another caller's bucket, billing days."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import ratemw
from ratemw import Calendar, Limiter, RateLimitMiddleware, Rule, WSGIRateLimitMiddleware
from ratemw.testing import FakeClock
from tests.redis_servers import find_free_port


async def ok(request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


def asgi(limiter: Limiter, routes: list[Any], **options: Any) -> TestClient:
    app = Starlette(routes=routes)
    app.add_middleware(RateLimitMiddleware, limiter=limiter, **options)
    return TestClient(app)


# -- paths ------------------------------------------------------------------------------------


def test_a_trailing_newline_does_not_escape_a_rule() -> None:
    # Starlette's routes end in '$': "/api/search%0A" reaches "/api/search".
    client = asgi(Limiter(), [Route("/api/search", ok)], rules=[Rule("/api/search", "2/minute")])
    replies = [client.get("/api/search").status_code, client.get("/api/search%0A").status_code]
    assert replies == [200, 200]
    assert client.get("/api/search%0A").status_code == 429
    assert client.get("/api/search").status_code == 429


def test_an_exempt_path_matches_no_more_than_the_router_would() -> None:
    limiter = Limiter(exempt_paths=["/status/{code:int}", "/health"])

    async def by_name(request: Any) -> PlainTextResponse:
        return PlainTextResponse("named")

    routes = [
        Route("/status/{code:int}", ok),
        Route("/status/{name}", limiter.limit("2/minute")(by_name)),
        Route("/health", ok),
    ]
    client = asgi(limiter, routes)
    assert [client.get("/status/200").status_code for _ in range(4)] == [200] * 4
    assert [client.get("/status/abc").status_code for _ in range(3)] == [200, 200, 429]
    assert [client.get("/status/٣").status_code for _ in range(1)] == [
        429
    ]  # not [0-9]: the limited route
    assert [client.get("/health%0A").status_code for _ in range(3)] == [200, 200, 200]


def test_a_rule_with_a_converter_limits_what_the_router_routes_there() -> None:
    async def new(request: Any) -> PlainTextResponse:
        return PlainTextResponse("new")

    client = asgi(
        Limiter(),
        [Route("/items/new", new), Route("/items/{id:int}", ok)],
        rules=[Rule("/items/{id:int}", "1/minute")],
    )
    assert [client.get(f"/items/{n}").status_code for n in (1, 2)] == [200, 429]
    assert [client.get("/items/new").status_code for _ in range(3)] == [200] * 3


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_script_name_cannot_poison_the_wsgi_plan_cache() -> None:
    limiter = Limiter(exempt_paths=["/search"])

    def routes(environ: dict[str, Any]) -> tuple[Any, str | None]:
        return _wsgi_app, environ.get("PATH_INFO")

    app = WSGIRateLimitMiddleware(
        _wsgi_app, limiter=limiter, routes=routes, rules=[Rule("/api/search", "2/minute")]
    )

    def get(script_name: str, path_info: str) -> str:
        environ: dict[str, Any] = {"SCRIPT_NAME": script_name, "PATH_INFO": path_info}
        setup_testing_defaults(environ)
        environ["SCRIPT_NAME"], environ["PATH_INFO"] = script_name, path_info
        statuses: list[str] = []
        b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
        return statuses[-1][:3]

    assert get("/api", "/search") == "200"  # an exempt path under a mount: planned empty
    assert [get("", "/api/search") for _ in range(3)] == ["200", "200", "429"]


# -- looks that must not count ----------------------------------------------------------------


def test_a_look_during_an_outage_does_not_spend_the_fallback_quota() -> None:
    limiter = Limiter(
        storage=f"redis://127.0.0.1:{find_free_port()}",
        storage_options={"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        failure_mode="fallback",
    )
    for _ in range(5):
        assert limiter.peek("k", "3/minute", scope="s").policies[0].remaining == 3
    assert [limiter.hit("k", "3/minute", scope="s").allowed for _ in range(4)] == [
        True, True, True, False
    ]  # fmt: skip


# -- identities -------------------------------------------------------------------------------


def test_a_huge_integer_key_is_an_identity_not_a_500() -> None:
    huge = 10**5000
    limiter = Limiter(key=lambda request: huge)
    client = asgi(limiter, [Route("/", limiter.limit("1/minute")(ok))])
    assert [client.get("/").status_code for _ in range(2)] == [200, 429]
    assert limiter.hit(huge, "1/minute").allowed
    assert not limiter.hit(huge, "1/minute").allowed
    assert limiter.hit(-huge, "1/minute").allowed  # another number, another caller


def test_django_ratelimit_values_never_name_an_address() -> None:
    from tests.contrib.django_setup import configure_django, project

    configure_django()
    from django.http import HttpResponse
    from django.test import Client
    from django.urls import path

    from ratemw.contrib.django import ratelimit

    view = ratelimit(key="header:x-api-key", rate="2/m")(lambda request: HttpResponse("ok"))
    with project(Limiter(), path("v/", view), middleware=[]):
        client = Client()
        # An attacker sends the victim's address as its API key, until refused...
        attacker = [client.get("/v/", HTTP_X_API_KEY="198.51.100.9").status_code for _ in range(3)]
        assert attacker == [200, 200, 403]
        # ...and the victim at that address, without a key, still has its own quota.
        assert client.get("/v/", REMOTE_ADDR="198.51.100.9").status_code == 200


# -- billing days -----------------------------------------------------------------------------


def billing_day_from(request: Any) -> Any:
    return {"acme": 15}[request.headers["x-tenant"]]


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_a_billing_day_callable_sees_the_request_with_the_default_key(adapter: str) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    clock = FakeClock(start=datetime(2027, 1, 20, tzinfo=ZoneInfo("UTC")).timestamp())
    limiter = Limiter(clock=clock)  # the default key: a scope is enough for it
    limit = Calendar(5, "month", billing_day=billing_day_from)
    if adapter == "asgi":
        client = asgi(limiter, [Route("/export", limiter.limit(limit)(ok))])
        reply = client.get("/export", headers={"X-Tenant": "acme"})
        header = reply.headers["ratelimit"]
    else:
        flask = pytest.importorskip("flask")
        from ratemw.contrib.flask import init_app

        app = flask.Flask(__name__)
        app.add_url_rule("/export", "export", limiter.limit(limit)(lambda: "ok"))
        init_app(app, limiter)
        header = app.test_client().get("/export", headers={"X-Tenant": "acme"}).headers["RateLimit"]
    # 20 January to 15 February: 26 days.
    assert header == f'"per-calendar-month";r=4;t={26 * 86400}'


def test_a_billing_day_the_caller_varies_earns_no_quota() -> None:
    limiter = Limiter(clock=FakeClock())

    def billing_day(request: Any) -> Any:
        return int(request.headers.get("x-billing-day", "x"))  # the caller picks it: a bug

    client = asgi(
        limiter, [Route("/e", limiter.limit(Calendar(3, "month", billing_day=billing_day))(ok))]
    )
    statuses = [
        client.get("/e", headers={"X-Billing-Day": str(day)}).status_code
        for day in (1, 5, 9, 13, 17, 21, 25, 29)
    ] + [client.get("/e").status_code]  # failing: counted as from the 1st
    assert statuses.count(200) == 3


# -- the request's standing -------------------------------------------------------------------


def test_current_under_asgi_django() -> None:
    from tests.contrib.django_setup import configure_django, project

    configure_django()
    from django.http import HttpResponse
    from django.test import AsyncClient
    from django.urls import path

    limiter = Limiter()

    def view(request: Any) -> Any:
        decision = ratemw.current(request)
        return HttpResponse(json.dumps(None if decision is None else decision.exceeded))

    soft = limiter.limit("1/minute", block=False)(view)

    async def fetch() -> list[bytes]:
        client = AsyncClient()
        return [(await client.get("/soft/")).content for _ in range(2)]

    with project(limiter, path("soft/", soft)):
        assert asyncio.run(fetch()) == [b"false", b"true"]


def test_a_sync_on_exceeded_callable_works() -> None:
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    from ratemw.contrib.websockets import MessageLimit

    told: list[int | None] = []

    def exceeded(websocket: WebSocket, decision: Any) -> None:
        told.append(decision.retry_after)

    limit = MessageLimit(Limiter(clock=FakeClock()), "1/minute", on_exceeded=exceeded)

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        async for text in limit.iter_text(websocket):
            await websocket.send_text(text)

    client = TestClient(Starlette(routes=[WebSocketRoute("/ws", echo)]))
    with client.websocket_connect("/ws") as ws:
        ws.send_text("a")
        assert ws.receive_text() == "a"
        ws.send_text("b")  # dropped, the callable told
        ws.send_text("c")
    assert told == [60, 60]


def test_a_bad_limit_fails_even_on_a_disabled_limiter() -> None:
    from ratemw.contrib.websockets import MessageLimit

    limiter = Limiter(enabled=False)
    with pytest.raises(ratemw.ConfigurationError):
        limiter.hit("k", "lots")
    with pytest.raises(ratemw.ConfigurationError):
        limiter.peek("k", 5)  # type: ignore[arg-type]
    with pytest.raises(ratemw.ConfigurationError):
        MessageLimit(limiter, "lots")
    assert limiter.hit("k", "1/minute").allowed


def test_json_of_current_in_a_starlette_endpoint_is_none_without_limits() -> None:
    async def tell(request: Any) -> JSONResponse:
        return JSONResponse(ratemw.current(request) is None)

    client = asgi(Limiter(), [Route("/", tell)])
    assert client.get("/").json() is True
