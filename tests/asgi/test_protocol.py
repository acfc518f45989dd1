"""ASGI protocol details: streaming, concurrency, WebSockets, lifespan, odd headers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anyio
import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket

from ratemw import Limiter, RateLimitMiddleware, keys
from ratemw.testing import FakeClock
from tests.asgi._helpers import statuses
from tests.conftest import make_client, ok, websocket_handshake

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- protocol details ----------------------------------------------------------------------------


async def test_streaming_passes_through_chunk_by_chunk() -> None:
    limiter = Limiter()
    second_chunk_allowed = anyio.Event()
    received: list[bytes] = []

    @limiter.limit("10/minute")
    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> Any:
            yield b"first"
            await second_chunk_allowed.wait()  # blocks until the caller saw the first chunk
            yield b"second"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/", stream)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [],
        "query_string": b"",
        "client": ("1.2.3.4", 1),
        "server": ("test", 80),
        "scheme": "http",
        "root_path": "",
        "http_version": "1.1",
    }
    start: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        await anyio.sleep_forever()
        return {}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message.get("body"):
            received.append(message["body"])
            if message["body"] == b"first":
                second_chunk_allowed.set()

    with anyio.fail_after(5):
        await app(scope, receive, send)
    assert received == [b"first", b"second"]
    assert (b"ratelimit", b'"per-minute";r=9;t=60') in start["headers"]


async def test_no_over_admission_under_100_concurrent_tasks() -> None:
    async def slow_key(request: Request) -> str:
        await asyncio.sleep(0.001)  # let the tasks interleave inside the decision
        return "one-caller"

    limiter = Limiter(key=slow_key)
    app = Starlette(routes=[Route("/", limiter.limit("10/minute")(ok))])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        responses = await asyncio.gather(*(client.get("/") for _ in range(100)))
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 10
    assert codes.count(429) == 90


def test_websocket_handshake_refused_with_429(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)

    @limiter.limit("1/minute")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    client = make_client(limiter, routes=[WebSocketRoute("/ws", echo)])
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_text() == "hi"
    with pytest.raises(WebSocketDenialResponse) as info, client.websocket_connect("/ws"):
        pass
    assert info.value.status_code == 429
    assert info.value.headers["retry-after"] == "60"
    assert json.loads(info.value.content)["violated-policies"] == ["per-minute"]


async def test_websocket_refused_with_close_1008_without_denial_extension() -> None:
    limiter = Limiter()

    @limiter.limit("1/minute")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/ws", echo)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)

    assert (await websocket_handshake(app))[0]["type"] == "websocket.accept"
    refused = await websocket_handshake(app)
    assert refused == [{"type": "websocket.close", "code": 1008, "reason": "rate limit exceeded"}]


async def test_lifespan_and_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = RateLimitMiddleware(app, limiter=Limiter(default_limits="1/minute"))
    await middleware({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"]


def test_plain_asgi_app_without_routes_uses_rules_and_defaults(clock: FakeClock) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("raw")(scope, receive, send)

    limiter = Limiter(clock=clock, default_limits="1/minute")
    client = TestClient(RateLimitMiddleware(app, limiter=limiter))
    assert statuses(client, n=2) == [200, 429]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([(b"x-forwarded-for", b"\xff\xfe garbage")], id="non-utf8 xff"),
        pytest.param([(b"x-api-key", b"k" * 1_000_000)], id="1 MB api key"),
        pytest.param([(b"forwarded", b'for="[::1%25eth0]"' * 1000)], id="huge forwarded"),
    ],
)
async def test_hostile_headers_never_500(headers: list[tuple[bytes, bytes]]) -> None:
    limiter = Limiter(key=keys.header("x-api-key"))
    app = Starlette(routes=[Route("/ünïcode/{x}", limiter.limit("1/minute")(ok))])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    codes = []
    for _ in range(2):
        sent: list[dict[str, Any]] = []
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/ünïcode/✓",
            "headers": headers,
            "query_string": b"",
            "client": None,
            "server": None,
            "scheme": "http",
            "root_path": "",
            "http_version": "1.1",
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
            sent.append(message)

        await app(scope, receive, send)
        codes.append(sent[0]["status"])
    assert codes == [200, 429]
