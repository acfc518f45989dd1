"""What a caller sees from the ASGI middleware: the 429, the headers, Retry-After."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import JSONResponse

from ratemw import Limiter, RateLimitExceeded
from ratemw.testing import FakeClock
from tests.asgi._helpers import statuses
from tests.conftest import make_client, parse_sf_list

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the caller's view ------------------------------------------------------------------------


def test_429_is_problem_json_with_every_field(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)
    client = make_client(limiter, decorate=limiter.limit("2/minute;100/hour"))
    assert statuses(client, n=2) == [200, 200]
    clock.advance(43)
    response = client.get("/")
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["retry-after"] == "17"
    assert parse_sf_list(response.headers["ratelimit-policy"]) == [
        ("per-minute", {"q": 2, "w": 60}),
        ("per-hour", {"q": 100, "w": 3600}),
    ]
    assert parse_sf_list(response.headers["ratelimit"]) == [
        ("per-minute", {"r": 0, "t": 17}),
        ("per-hour", {"r": 98, "t": 3557}),
    ]
    assert response.json() == {
        "type": "https://iana.org/assignments/http-problem-types#quota-exceeded",
        "title": "Request cannot be satisfied as assigned quota has been exceeded",
        "status": 429,
        "detail": "Rate limit exceeded: 2 requests per 1 minute on GET /. Try again in 17 seconds.",
        "instance": "/",
        "violated-policies": ["per-minute"],
        "retry_after": 17,
        "policies": [
            {
                "name": "per-minute",
                "quota": 2,
                "unit": "requests",
                "window": 60,
                "remaining": 0,
                "reset": 17,
            },
        ],
    }


def test_success_carries_ratelimit_headers_but_never_retry_after(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)
    client = make_client(limiter, decorate=limiter.limit("5/minute"))
    response = client.get("/")
    assert response.status_code == 200
    assert "retry-after" not in response.headers
    assert parse_sf_list(response.headers["ratelimit"]) == [("per-minute", {"r": 4, "t": 60})]
    assert parse_sf_list(response.headers["ratelimit-policy"]) == [
        ("per-minute", {"q": 5, "w": 60})
    ]


def test_retry_after_is_the_longest_wait_over_violated_policies(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, application_limits="3/hour")
    client = make_client(limiter, decorate=limiter.limit("1/minute"))
    for _ in range(3):
        assert statuses(client) == [200]
        clock.advance(60)
    response = client.get("/")
    assert response.status_code == 429
    body = response.json()
    assert body["violated-policies"] == ["app-per-hour"]
    assert body["retry_after"] == int(response.headers["retry-after"]) == 3600 - 180
    assert body["retry_after"] == max(p["reset"] for p in body["policies"])


def test_retry_after_is_never_zero_while_blocked(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)
    client = make_client(limiter, decorate=limiter.limit("1/second"))
    assert statuses(client) == [200]
    clock.advance(0.999)
    response = client.get("/")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert parse_sf_list(response.headers["ratelimit"]) == [("per-second", {"r": 0, "t": 1})]


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(gaps=st.lists(st.integers(min_value=0, max_value=7_000), min_size=1, max_size=25))
def test_waiting_retry_after_admits_the_same_request(strategy: str, gaps: list[int]) -> None:
    clock = FakeClock(start=1_800_000_000.123)
    limiter = Limiter(clock=clock, strategy=strategy)
    client = make_client(limiter, decorate=limiter.limit("3 per 10 seconds"))
    for gap in gaps:
        clock.advance(gap / 1000)
        response = client.get("/")
        if response.status_code == 200:
            continue
        retry_after = int(response.headers["retry-after"])
        assert retry_after >= 1
        assert response.json()["retry_after"] == retry_after
        clock.advance(retry_after)
        assert client.get("/").status_code == 200


def test_a_cost_that_can_never_fit_says_so_without_retry_after(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)
    client = make_client(limiter, decorate=limiter.limit("5/minute", cost=10))
    response = client.get("/")
    assert response.status_code == 429
    assert "retry-after" not in response.headers
    body = response.json()
    assert "retry_after" not in body
    assert "can never be satisfied" in body["detail"]
    assert body["policies"][0]["reset"] is None


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        pytest.param(
            "draft-6",
            {
                "ratelimit-limit": "2",
                "ratelimit-remaining": "1",
                "ratelimit-reset": "60",
                "ratelimit-policy": "2;w=60",
            },
            id="draft-6",
        ),
        pytest.param(
            "draft-7",
            {"ratelimit": "limit=2, remaining=1, reset=60", "ratelimit-policy": "2;w=60"},
            id="draft-7",
        ),
        pytest.param(
            "legacy",
            {
                "x-ratelimit-limit": "2",
                "x-ratelimit-remaining": "1",
                "x-ratelimit-reset": "1800000060",
            },
            id="legacy epoch seconds",
        ),
    ],
)
def test_header_modes(clock: FakeClock, mode: str, expected: dict[str, str]) -> None:
    limiter = Limiter(clock=clock, headers=mode)
    client = make_client(limiter, decorate=limiter.limit("2/minute"))
    headers = client.get("/").headers
    assert {k: headers.get(k) for k in expected} == expected
    if mode != "draft-7":
        assert "ratelimit" not in headers


def test_legacy_reset_epoch_is_never_before_the_real_reset() -> None:
    """Half a second into a second, a 60 s window ends at .5: the epoch must round up."""
    clock = FakeClock(start=1_800_000_000.5)
    limiter = Limiter(clock=clock, headers="legacy")
    client = make_client(limiter, decorate=limiter.limit("2/minute"))
    assert client.get("/").headers["x-ratelimit-reset"] == "1800000061"


def test_headers_can_be_switched_off(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, headers=False)
    client = make_client(limiter, decorate=limiter.limit("1/minute"))
    assert "ratelimit" not in client.get("/").headers
    response = client.get("/")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "60"
    assert "ratelimit" not in response.headers


def test_custom_handler_replaces_the_429(clock: FakeClock) -> None:
    seen: list[RateLimitExceeded] = []

    async def handler(request: Request, exc: RateLimitExceeded) -> JSONResponse:
        seen.append(exc)
        return JSONResponse(
            {"wait": exc.retry_after},
            status_code=429,
            headers={"Retry-After": str(exc.retry_after)},
        )

    limiter = Limiter(clock=clock)
    client = make_client(limiter, decorate=limiter.limit("1/minute"), handler=handler)
    client.get("/")
    response = client.get("/")
    assert response.json() == {"wait": 60}
    assert seen[0].violated[0].name == "per-minute"
    assert seen[0].body["retry_after"] == 60
