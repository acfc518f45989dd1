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


app = Starlette(routes=[Route("/limited", limited), Route("/health", health)])
app.add_middleware(RateLimitMiddleware, limiter=limiter)
