"""A request cancelled at any await (a timeout wrapper, a server that cancels on disconnect)
gives back every concurrency slot it may hold.

Otherwise a leaked slot refuses every later request of that caller until the slot lapses
(``concurrency_timeout``, 300 s), with a ``Retry-After: 1`` that is not true.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ratemw import Limiter, RateLimitMiddleware
from tests.redis_servers import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def ok(request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


def app_for(limiter: Limiter) -> Any:
    app = Starlette(routes=[Route("/", limiter.limit("1 concurrent")(ok))])
    return RateLimitMiddleware(app, limiter=limiter)


async def status(app: Any) -> int:
    scope = {
        "type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b"",
        "client": ("192.0.2.1", 1), "server": ("t", 80), "scheme": "http", "root_path": "",
        "http_version": "1.1",
    }  # fmt: skip
    found: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            found.append(message["status"])

    await app(scope, receive, send)
    return found[0]


async def cancelled(app: Any, after: float) -> None:
    """Start a request and cancel it ``after`` seconds in, as a timeout wrapper would."""
    task = asyncio.ensure_future(status(app))
    await asyncio.sleep(after)
    assert not task.done(), "the request finished before it could be cancelled"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_request_cancelled_in_a_hook_after_acquiring_frees_its_slot() -> None:
    """The slot is taken; the request is cancelled while an async hook still runs."""
    stuck = asyncio.Event()
    calls = 0

    async def on_near_limit(request: Any, policy: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await stuck.wait()  # never set: this request hangs here until cancelled

    limiter = Limiter(on_near_limit=on_near_limit)
    app = app_for(limiter)
    await cancelled(app, after=0.05)
    assert calls == 1
    assert await status(app) == 200  # not refused by a slot nobody holds
    table = limiter.backends.sync._data  # type: ignore[attr-defined]
    assert all(not state for state, _ in table.values())


async def test_a_request_cancelled_while_redis_runs_its_acquire_frees_its_slot(
    redis_server_private: RedisServer,
) -> None:
    """Cancelled with the script sent and its reply not yet back (the server is paused)."""
    limiter = Limiter(storage=redis_server_private.url, storage_options={"socket_timeout": 5})
    app = app_for(limiter)
    admin = redis_server_private.client()
    try:
        assert await status(app) == 200  # connected, script loaded
        admin.execute_command("CLIENT", "PAUSE", 400, "ALL")
        await cancelled(app, after=0.1)
        await asyncio.sleep(0.5)  # the pause ends: the acquire runs, then the release
        assert await status(app) == 200
        assert all(admin.zcard(key) == 0 for key in admin.scan_iter("ratemw:*"))
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        await limiter.backends.async_.aclose()
