"""A one-route app limited on Redis, for ``uvicorn --workers N`` in the integration tests.

The storage URI comes from ``RATEMW_TEST_STORAGE`` (e.g. ``redis://127.0.0.1:6379``); the
limit from ``RATEMW_TEST_LIMIT`` (default ``50/minute``). Every caller shares one key, so the
limit counts all requests to ``/limited`` across every worker process. A storage failure answers
503 (``failure_mode="deny"``), never a silent admission, so a test can count exactly.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ratemw import Limiter, RateLimitMiddleware

limiter = Limiter(
    storage=os.environ["RATEMW_TEST_STORAGE"],
    key=lambda request: "everyone",
    failure_mode="deny",
    # Generous timeouts: the test machine is busy hammering the server while this runs.
    storage_options={"socket_timeout": 5, "socket_connect_timeout": 5, "pool_timeout": 5},
)


@limiter.limit(os.environ.get("RATEMW_TEST_LIMIT", "50/minute"))
async def limited(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(os.getpid()))


@limiter.exempt
async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(os.getpid()))


class WorkerHeader:
    """Names the worker process on every response, 429s included (``X-Worker: <pid>``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.pid = str(os.getpid()).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-worker", self.pid)]
            await send(message)

        await self.app(scope, receive, send_named)


app = Starlette(routes=[Route("/limited", limited), Route("/health", health)])
app.add_middleware(RateLimitMiddleware, limiter=limiter)
app.add_middleware(WorkerHeader)
