"""The ratemw service the client's live tests call: ``/limited`` allows each caller (the
``X-Caller`` header) 5 requests per 2 seconds, and ``/refusals`` says how many requests of
each caller the server refused.

Serve it with ``uvicorn tests.client.live_app:app``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from ratemw import Limiter, RateLimitMiddleware, keys

LIMIT = "5 per 2 seconds"

refused: Counter[str] = Counter()


def count_refusal(request: Request, exc: Any) -> None:
    refused[request.headers.get("x-caller", "")] += 1


limiter = Limiter(storage="memory://", key=keys.header("X-Caller"), on_breach=count_refusal)


@limiter.limit(LIMIT)
async def limited(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@limiter.exempt
async def refusals(request: Request) -> JSONResponse:
    return JSONResponse(dict(refused))


@limiter.exempt
async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


app = Starlette(
    routes=[
        Route("/limited", limited),
        Route("/refusals", refusals),
        Route("/health", health),
    ]
)
app.add_middleware(RateLimitMiddleware, limiter=limiter)
