"""GCRA, concurrency quotas, refunds and strategies of your own, through the middleware."""

from __future__ import annotations

from typing import Any

import anyio
import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from ratemw import Limiter, RateLimitMiddleware
from ratemw.testing import FakeClock
from tests.asgi._helpers import statuses
from tests.conftest import make_client, parse_sf_list

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- strategies beyond windows, concurrency, refunds ------------------------------------------


def test_gcra_end_to_end_with_burst(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, strategy="gcra")
    client = make_client(limiter, decorate=limiter.limit("6/minute burst 2"))
    assert statuses(client, n=2) == [200, 200]
    response = client.get("/")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "10"  # one request every 10 s
    assert "bursts of 2" in response.json()["detail"]
    clock.advance(10)
    assert statuses(client, n=2) == [200, 429]


def test_a_burst_without_gcra_is_a_configuration_error() -> None:
    from ratemw import ConfigurationError

    limiter = Limiter()
    with pytest.raises(ConfigurationError, match="burst"):
        limiter.limit("6/minute burst 2")
    with pytest.raises(ConfigurationError, match="burst"):
        Limiter(default_limits="6/minute burst 2")


def test_concurrency_headers_and_refusal(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)
    client = make_client(limiter, decorate=limiter.limit("2 concurrent"))
    response = client.get("/")
    assert parse_sf_list(response.headers["ratelimit-policy"]) == [
        ("concurrent", {"q": 2, "qu": "concurrent-requests"})
    ]
    # Each request finished before the next began: the slot came back every time.
    assert statuses(client, n=5) == [200] * 5


async def test_concurrency_slots_return_after_streams_disconnects_and_errors() -> None:
    limiter = Limiter()
    release_streams = anyio.Event()

    @limiter.limit("2 concurrent")
    async def slow(request: Request) -> StreamingResponse:
        async def body() -> Any:
            yield b"start"
            await release_streams.wait()
            yield b"end"

        return StreamingResponse(body())

    @limiter.limit("2 concurrent")
    async def boom(request: Request) -> PlainTextResponse:
        raise RuntimeError("app failure")

    app = Starlette(routes=[Route("/slow", slow), Route("/boom", boom)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    storage = limiter.backends.sync
    transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)

    def in_flight() -> int:
        return sum(len(state) for state, _ in storage._data.values())  # type: ignore[attr-defined]

    async with httpx2.AsyncClient(transport=transport, base_url="http://t") as client:
        async with anyio.create_task_group() as tg:

            async def stream() -> None:
                async with client.stream("GET", "/slow") as response:
                    assert response.status_code == 200
                    async for _ in response.aiter_bytes():
                        pass

            tg.start_soon(stream)
            tg.start_soon(stream)
            with anyio.fail_after(5):
                while in_flight() < 2:
                    await anyio.sleep(0.01)
            assert (await client.get("/slow")).status_code == 429
            release_streams.set()
        assert in_flight() == 0
        assert (await client.get("/boom")).status_code == 500
        assert in_flight() == 0


async def test_concurrency_slot_freed_when_the_client_disconnects() -> None:
    limiter = Limiter()
    started = anyio.Event()

    @limiter.limit("1 concurrent")
    async def wait_for_disconnect(request: Request) -> PlainTextResponse:
        started.set()
        while not await request.is_disconnected():
            await anyio.sleep(0.01)
        return PlainTextResponse("gone")

    app = Starlette(routes=[Route("/", wait_for_disconnect)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [],
        "query_string": b"",
        "client": ("1.2.3.4", 1),
        "server": ("t", 80),
        "scheme": "http",
        "root_path": "",
        "http_version": "1.1",
    }
    messages = [{"type": "http.request", "body": b""}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        return {"type": "http.disconnect"}  # the client is gone

    async def send(message: dict[str, Any]) -> None:
        pass

    storage = limiter.backends.sync
    with anyio.fail_after(5):
        await app(scope, receive, send)
    assert started.is_set()
    assert all(not state for state, _ in storage._data.values())  # type: ignore[attr-defined]


def test_deduct_when_refunds_server_errors(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)
    failing = {"now": True}

    @limiter.limit("2/minute", deduct_when=lambda response: response.status_code < 500)
    async def flaky(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x", status_code=503 if failing["now"] else 200)

    client = make_client(limiter, routes=[Route("/", flaky)])
    assert statuses(client, n=4) == [503] * 4  # server errors do not count
    failing["now"] = False
    assert statuses(client, n=3) == [200, 200, 429]


async def async_not_modified(response: Any) -> bool:
    return bool(response.status_code != 304)


def test_async_deduct_when_and_raising_one(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)

    @limiter.limit("1/minute", deduct_when=async_not_modified)
    async def cached(request: Request) -> PlainTextResponse:
        return PlainTextResponse("", status_code=304)

    def broken(response: Any) -> bool:
        raise RuntimeError("deduct_when bug")

    @limiter.limit("1/minute", deduct_when=broken)
    async def other(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x")

    client = make_client(limiter, routes=[Route("/cached", cached), Route("/other", other)])
    assert statuses(client, "/cached", 3) == [304, 304, 304]
    assert statuses(client, "/other", 2) == [200, 429]  # a raising deduct_when: it counts


def test_pluggable_strategy(clock: FakeClock) -> None:
    from ratemw.storage import Hit, Usage
    from ratemw.storage.strategies import STRATEGY_IMPLEMENTATIONS, register_strategy

    class EveryOther:
        """Admit every other request, whatever the quota (a toy)."""

        name = "every-other"

        def check(self, state: Any, now: int, hit: Hit) -> Usage:
            count = state or 0
            return Usage(count % 2 == 0, hit.amount, 1000, 0 if count % 2 == 0 else 1000, now)

        def consume(self, state: Any, now: int, hit: Hit) -> Any:
            return (state or 0) + 1

        def refund(self, state: Any, now: int, hit: Hit, stamp: int) -> Any:
            return state

        def expires(self, state: Any, hit: Hit) -> int:
            return 2**62

    register_strategy(EveryOther())
    try:
        limiter = Limiter(clock=clock, strategy="every-other")
        client = make_client(limiter, decorate=limiter.limit("5/minute"))
        assert statuses(client, n=3) == [200, 429, 429]
        from ratemw import ConfigurationError

        with pytest.raises(ConfigurationError, match="'every-other' is not served by 'redis'"):
            Limiter(storage="redis://localhost:6379", strategy="every-other")
    finally:
        del STRATEGY_IMPLEMENTATIONS["every-other"]
