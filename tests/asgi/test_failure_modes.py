"""What a request gets when the storage fails: the failure modes."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ratemw import Limiter, Rule
from ratemw.testing import FakeClock
from tests.asgi._helpers import statuses
from tests.conftest import make_client, ok

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- storage failure policy (the memory storage cannot fail; a broken one stands in) ------------


class BrokenStorage:
    async def acquire(self, hits: Any) -> Any:
        raise ConnectionError("storage is down")


@pytest.mark.parametrize(("mode", "expected"), [("allow", 200), ("deny", 503), ("fallback", 429)])
def test_failure_modes(clock: FakeClock, mode: str, expected: int) -> None:
    errors: list[Exception] = []
    limiter = Limiter(
        clock=clock, failure_mode=mode, on_storage_error=lambda req, exc: errors.append(exc)
    )
    limiter.backends.async_ = BrokenStorage()  # type: ignore[assignment]
    limiter.backends.memory = None  # the driver would otherwise call memory directly
    client = make_client(limiter, decorate=limiter.limit("1/minute"))
    assert client.get("/").status_code == 200 if mode != "deny" else True
    response = client.get("/")
    assert response.status_code == expected
    if expected == 503:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith("#temporary-reduced-capacity")
        assert response.headers["retry-after"] == "1"
    assert errors and type(errors[0]).__name__ == "StorageError"


def test_failure_mode_per_limit_strictest_wins(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, failure_mode="allow", application_limits="100/minute")
    limiter.backends.async_ = BrokenStorage()  # type: ignore[assignment]
    limiter.backends.memory = None

    @limiter.limit("5/minute", failure_mode="deny")
    async def payments(request: Request) -> PlainTextResponse:
        return PlainTextResponse("paid")

    @limiter.limit("1/minute", failure_mode="fallback")
    async def search(request: Request) -> PlainTextResponse:
        return PlainTextResponse("found")

    client = make_client(
        limiter,
        routes=[
            Route("/pay", payments),
            Route("/search", search),
            Route("/other", ok),
            Route("/ruled", ok),
        ],
        rules=[Rule("/ruled", "5/minute", failure_mode="deny")],
    )
    assert client.get("/pay").status_code == 503  # deny beats the limiter's allow
    assert statuses(client, "/search", 2) == [200, 429]  # fallback: memory limits
    assert statuses(client, "/other", 3) == [200, 200, 200]  # the limiter's allow
    assert client.get("/ruled").status_code == 503


def test_unknown_per_limit_failure_mode_is_refused() -> None:
    from ratemw import ConfigurationError

    with pytest.raises(ConfigurationError, match="'explode'"):
        Limiter().limit("5/minute", failure_mode="explode")
