"""A Starlette app with ratemw: run it with ``uvicorn examples.starlette_app:app``.

- ``/search``: 5 requests a minute and 100 an hour per client;
- ``/items/{item_id}``: the default limit (20 a minute), one bucket for every item;
- ``/stream``: server-sent events, passed through untouched;
- ``/health``: never limited.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from ratemw import Limiter, RateLimitMiddleware, keys

limiter = Limiter(
    storage="memory://",
    default_limits="20/minute",
    key=keys.client_ip(),
)


@limiter.limit("5/minute;100/hour")
async def search(request: Request) -> JSONResponse:
    return JSONResponse({"query": request.query_params.get("q", ""), "results": []})


async def item(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.path_params["item_id"]})


@limiter.limit("10/minute")
async def stream(request: Request) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        for n in range(3):
            yield f"data: tick {n}\n\n"
            await asyncio.sleep(0.05)

    return StreamingResponse(events(), media_type="text/event-stream")


@limiter.exempt
async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/search", search),
        Route("/items/{item_id:int}", item),
        Route("/stream", stream),
        Route("/health", health),
    ]
)
app.add_middleware(RateLimitMiddleware, limiter=limiter)
