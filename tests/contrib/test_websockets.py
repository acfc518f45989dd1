"""WebSocket message limits (``ratemw.contrib.websockets.MessageLimit``), on Starlette."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from ratemw import ConfigurationError, Decision, Limiter, RateLimitMiddleware, keys
from ratemw.contrib.websockets import POLICY_VIOLATION, MessageLimit
from ratemw.testing import FakeClock
from tests.redis_servers import RedisServer


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def chat_app(limit: MessageLimit, *, as_json: bool = False) -> TestClient:
    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        if as_json:
            async for data in limit.iter_json(websocket):
                await websocket.send_json({"echo": data})
        else:
            async for text in limit.iter_text(websocket):
                await websocket.send_text(f"echo: {text}")

    return TestClient(Starlette(routes=[WebSocketRoute("/chat", chat)]))


def test_the_message_over_the_limit_closes_with_1008(clock: FakeClock) -> None:
    client = chat_app(MessageLimit(Limiter(clock=clock), "3/minute"))
    with client.websocket_connect("/chat") as ws:
        for n in range(3):
            ws.send_text(f"m{n}")
            assert ws.receive_text() == f"m{n}".join(["echo: ", ""])
        clock.advance(15)
        ws.send_text("m3")
        closed = ws.receive()
    assert closed == {
        "type": "websocket.close",
        "code": POLICY_VIOLATION,
        "reason": "rate limit exceeded; retry in 45 s",
    }


def test_each_connection_has_its_own_count_by_default(clock: FakeClock) -> None:
    client = chat_app(MessageLimit(Limiter(clock=clock), "2/minute"))
    with client.websocket_connect("/chat") as first, client.websocket_connect("/chat") as second:
        for ws in (first, second, first, second):
            ws.send_text("hi")
            assert ws.receive_text() == "echo: hi"
        first.send_text("hi")
        assert first.receive()["code"] == POLICY_VIOLATION
        second.send_text("hi")
        assert second.receive()["code"] == POLICY_VIOLATION


def test_a_key_shares_the_count_across_connections(clock: FakeClock) -> None:
    client = chat_app(MessageLimit(Limiter(clock=clock), "2/minute", key=keys.client_ip()))
    with client.websocket_connect("/chat") as first:
        for _ in range(2):
            first.send_text("hi")
            assert first.receive_text() == "echo: hi"
    with client.websocket_connect("/chat") as second:  # the same client address
        second.send_text("hi")
        assert second.receive()["code"] == POLICY_VIOLATION


def test_on_exceeded_message_tells_and_keeps_the_connection(clock: FakeClock) -> None:
    client = chat_app(MessageLimit(Limiter(clock=clock), "2/minute", on_exceeded="message"))
    with client.websocket_connect("/chat") as ws:
        for text in ("a", "b"):
            ws.send_text(text)
            assert ws.receive_text() == f"echo: {text}"
        clock.advance(20)
        ws.send_text("c")  # dropped: the client is told instead
        told = json.loads(ws.receive_text())
        assert told["error"] == "rate_limited"
        assert told["retry_after"] == 40
        assert [(p["quota"], p["remaining"]) for p in told["policies"]] == [(2, 0)]
        clock.advance(40)
        ws.send_text("d")
        assert ws.receive_text() == "echo: d"


def test_on_exceeded_callable(clock: FakeClock) -> None:
    seen: list[Decision] = []

    async def exceeded(websocket: WebSocket, decision: Decision) -> None:
        seen.append(decision)
        await websocket.close(code=4029, reason="slow down")

    client = chat_app(MessageLimit(Limiter(clock=clock), "1/minute", on_exceeded=exceeded))
    with client.websocket_connect("/chat") as ws:
        ws.send_text("a")
        assert ws.receive_text() == "echo: a"
        ws.send_text("b")
        assert ws.receive()["code"] == 4029
    assert [d.retry_after for d in seen] == [60]


def test_json_messages_and_costs(clock: FakeClock) -> None:
    client = chat_app(MessageLimit(Limiter(clock=clock), "5/minute", cost=2), as_json=True)
    with client.websocket_connect("/chat") as ws:
        for n in range(2):
            ws.send_json({"n": n})
            assert ws.receive_json() == {"echo": {"n": n}}
        ws.send_json({"n": 2})  # 4 of 5 used: a message costing 2 does not fit
        assert ws.receive()["code"] == POLICY_VIOLATION


def test_admit_for_a_loop_of_your_own(clock: FakeClock) -> None:
    limit = MessageLimit(Limiter(clock=clock), "1/minute", on_exceeded="message")

    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        while True:
            try:
                data = await websocket.receive_bytes()
            except WebSocketDisconnect:
                return
            if await limit.admit(websocket):
                await websocket.send_bytes(data)

    client = TestClient(Starlette(routes=[WebSocketRoute("/chat", chat)]))
    with client.websocket_connect("/chat") as ws:
        ws.send_bytes(b"\x00")
        assert ws.receive_bytes() == b"\x00"
        ws.send_bytes(b"\x01")
        assert json.loads(ws.receive_text())["error"] == "rate_limited"


def test_with_the_handshake_limited_too(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)
    limit = MessageLimit(limiter, "1/minute")

    @limiter.limit("2/minute")
    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        async for text in limit.iter_text(websocket):
            await websocket.send_text(text)

    app = Starlette(routes=[WebSocketRoute("/chat", chat)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    client = TestClient(app)
    for _ in range(2):
        with client.websocket_connect("/chat") as ws:
            ws.send_text("a")
            assert ws.receive_text() == "a"
            ws.send_text("b")
            assert ws.receive()["code"] == POLICY_VIOLATION
    from starlette.testclient import WebSocketDenialResponse

    with pytest.raises(WebSocketDenialResponse), client.websocket_connect("/chat"):
        pass


def failing_key(websocket: WebSocket) -> Any:
    raise RuntimeError("broken")


@pytest.mark.parametrize("key", [failing_key, lambda ws: None, lambda ws: ""])
def test_a_key_that_fails_counts_by_client_address(
    clock: FakeClock, key: Callable[..., Any]
) -> None:
    client = chat_app(MessageLimit(Limiter(clock=clock), "1/minute", key=key))
    with client.websocket_connect("/chat") as first:
        first.send_text("a")
        assert first.receive_text() == "echo: a"
    with client.websocket_connect("/chat") as second:  # no escape by a new connection
        second.send_text("a")
        assert second.receive()["code"] == POLICY_VIOLATION


def test_messages_counted_on_redis(redis_standalone_clean: RedisServer) -> None:
    limiter = Limiter(storage=redis_standalone_clean.url)
    client = chat_app(MessageLimit(limiter, "2/minute", key=keys.client_ip()))
    with client.websocket_connect("/chat") as ws:
        for _ in range(2):
            ws.send_text("a")
            assert ws.receive_text() == "echo: a"
        ws.send_text("a")
        closed = ws.receive()
    assert closed["code"] == POLICY_VIOLATION
    assert closed["reason"].startswith("rate limit exceeded; retry in ")
    # Another process counting the same key with the same scope sees the same counts.
    other = Limiter(storage=redis_standalone_clean.url)
    assert other.peek("testclient", "2/minute", scope="websocket-messages").allowed is False
    other.backends.sync.close()
    limiter.backends.sync.close()


@pytest.mark.parametrize(
    "arguments",
    [
        {"limit": "lots"},
        {"limit": "5 concurrent"},
        {"key": "client_ip"},
        {"on_exceeded": "ignore"},
        {"scope": ""},
    ],
    ids=repr,
)
def test_misconfiguration_is_refused_at_start_up(arguments: dict[str, Any]) -> None:
    options = {"limit": "5/minute", **arguments}
    with pytest.raises(ConfigurationError):
        MessageLimit(Limiter(), **options)
    with pytest.raises(ConfigurationError, match="Limiter"):
        MessageLimit("limiter", "5/minute")  # type: ignore[arg-type]
