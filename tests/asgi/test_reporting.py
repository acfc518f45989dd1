"""Shadow mode, hooks, logging, and switching the limiter off."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ratemw import Limiter, RateLimitExceeded
from ratemw.testing import FakeClock
from tests.asgi._helpers import statuses
from tests.conftest import make_client

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- shadow mode, hooks, on/off -------------------------------------------------------------------


def test_shadow_mode_reports_without_refusing(clock: FakeClock) -> None:
    breaches: list[RateLimitExceeded] = []
    limiter = Limiter(clock=clock, shadow=True, on_breach=lambda req, exc: breaches.append(exc))
    client = make_client(limiter, decorate=limiter.limit("1/minute"))
    assert statuses(client, n=3) == [200, 200, 200]
    assert len(breaches) == 2
    assert all(getattr(exc, "shadow", False) for exc in breaches)


def test_a_shadow_limit_beside_an_enforced_one(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)

    @limiter.limit("1/minute", shadow=True)
    @limiter.limit("3/minute")
    async def both(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x")

    client = make_client(limiter, routes=[Route("/", both)])
    assert statuses(client, n=4) == [200, 200, 200, 429]


def test_hooks_sync_async_and_raising(clock: FakeClock) -> None:
    events: list[str] = []

    async def on_breach(request: Request, exc: RateLimitExceeded) -> None:
        events.append(f"breach {exc.retry_after}")

    def on_near_limit(request: Request, policy: Any) -> None:
        events.append(f"near {policy.name} {policy.remaining}")
        raise RuntimeError("a broken hook must not break the request")

    limiter = Limiter(clock=clock, on_breach=on_breach, on_near_limit=on_near_limit)
    client = make_client(limiter, decorate=limiter.limit("5/minute"))
    assert statuses(client, n=6) == [200, 200, 200, 200, 200, 429]
    assert events == ["near per-minute 1", "breach 60"]


def test_breaches_are_logged_with_structured_fields(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = Limiter(clock=clock)
    client = make_client(limiter, decorate=limiter.limit("1/minute"))
    with caplog.at_level("INFO", logger="ratemw"):
        statuses(client, n=2)
    [record] = [r for r in caplog.records if hasattr(r, "ratemw")]
    assert record.ratemw == {  # type: ignore[attr-defined]
        "event": "rate_limit_exceeded",
        "route": "/",
        "method": "GET",
        "policies": ["per-minute"],
        "retry_after": 60,
    }


def test_disabled_limiter_passes_everything(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, enabled=False)
    client = make_client(limiter, decorate=limiter.limit("1/minute"))
    assert statuses(client, n=3) == [200, 200, 200]


def test_limiter_reset_forgets_counts(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)
    client = make_client(limiter, decorate=limiter.limit("1/minute"))
    assert statuses(client, n=2) == [200, 429]
    limiter.reset()
    assert statuses(client) == [200]
