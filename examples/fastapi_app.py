"""A FastAPI app with ratemw: run it with ``uvicorn examples.fastapi_app:app``.

Endpoints need no ``request`` parameter; limits can depend on the caller's plan.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from starlette.requests import Request

from ratemw import Limiter, RateLimitMiddleware, Rule, keys

limiter = Limiter(
    storage="memory://",
    default_limits="60/minute",
    application_limits="1000/minute",
    key=keys.header("X-API-Key"),  # falls back to the client address
)


def plan_limit(request: Request) -> str:
    """Per-plan tiers: pro keys get more."""
    api_key = request.headers.get("x-api-key", "")
    return "100/minute" if api_key.startswith("pro-") else "10/minute"


app = FastAPI(title="ratemw example")
app.add_middleware(
    RateLimitMiddleware,
    limiter=limiter,
    rules=[Rule("/docs*", "30/minute")],
)


@app.get("/search")
@limiter.limit("5/minute;100/hour")
async def search(q: str = "") -> dict[str, object]:
    return {"query": q, "results": []}


@app.get("/reports")
@limiter.limit(plan_limit)
def reports() -> dict[str, object]:
    return {"reports": []}


router = APIRouter(prefix="/users")


@router.get("/{user_id}")
@limiter.limit("3/minute")
async def user(user_id: int) -> dict[str, int]:
    return {"id": user_id}


app.include_router(router)
