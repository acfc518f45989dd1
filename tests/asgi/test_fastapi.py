"""FastAPI path operations, routers and dependencies behind the middleware."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI
from starlette.testclient import TestClient

from ratemw import Limiter, RateLimitMiddleware
from ratemw.testing import FakeClock


def build(limiter: Limiter) -> TestClient:
    app = FastAPI()
    app.add_middleware(RateLimitMiddleware, limiter=limiter)

    @app.get("/search")
    @limiter.limit("2/minute")
    async def search(q: str = "") -> dict[str, str]:  # no request parameter
        return {"q": q}

    @limiter.limit("1/minute")  # decorator order does not matter
    @app.post("/items")
    def create() -> dict[str, bool]:  # a sync path operation
        return {"created": True}

    router = APIRouter(prefix="/users")

    def current_user() -> str:
        return "alice"

    @router.get("/{user_id}")
    @limiter.limit("1/minute")
    async def user(user_id: int, who: str = Depends(current_user)) -> dict[str, object]:
        return {"id": user_id, "who": who}

    app.include_router(router)
    return TestClient(app)


def test_path_operation_without_request_parameter() -> None:
    client = build(Limiter(clock=FakeClock()))
    assert [client.get("/search", params={"q": "x"}).status_code for _ in range(3)] == [
        200,
        200,
        429,
    ]
    assert client.get("/search").json()["status"] == 429


def test_sync_path_operation_and_decorator_order() -> None:
    client = build(Limiter(clock=FakeClock()))
    assert [client.post("/items").status_code for _ in range(2)] == [200, 429]


def test_included_router_counts_per_template() -> None:
    client = build(Limiter(clock=FakeClock()))
    assert client.get("/users/1").json() == {"id": 1, "who": "alice"}
    assert client.get("/users/2").status_code == 429


def test_validation_errors_still_counted_and_not_500() -> None:
    client = build(Limiter(clock=FakeClock()))
    assert client.get("/users/not-a-number").status_code == 422
    assert client.get("/users/1").status_code == 429


def test_the_usage_endpoint_in_fastapi() -> None:
    from ratemw.usage import UsageEndpoint

    limiter = Limiter(clock=FakeClock())
    app = FastAPI()
    router = APIRouter(prefix="/v1")

    @router.get("/users/{user_id}")
    @limiter.limit("3/minute")
    async def user(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    app.include_router(router)
    app.add_route("/rate_limit", UsageEndpoint(limiter))
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    client = TestClient(app)
    client.get("/v1/users/1")
    (one,) = client.get("/rate_limit", params={"path": "/v1/users/9"}).json()["routes"]
    assert (one["route"], one["policies"][0]["remaining"]) == ("/v1/users/{user_id}", 2)
    listed = client.get("/rate_limit").json()["routes"]
    assert [(r["route"], r["method"]) for r in listed] == [("/v1/users/{user_id}", "GET")]
