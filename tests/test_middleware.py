"""The ASGI middleware, driven through real HTTP requests on one-route apps."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anyio
import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route, Router, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket

from ratemw import Limiter, RateLimitExceeded, RateLimitMiddleware, Rule, keys
from ratemw.testing import FakeClock
from tests.conftest import make_client, ok, parse_sf_list, websocket_handshake

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def statuses(client: TestClient, path: str = "/", n: int = 1, **kwargs: Any) -> list[int]:
    return [client.get(path, **kwargs).status_code for _ in range(n)]


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


# -- which limits apply ------------------------------------------------------------------------


def test_all_or_nothing_a_denied_request_consumes_no_quota(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, application_limits="10/minute")

    @limiter.limit("1/minute")
    async def tight(request: Request) -> PlainTextResponse:
        return PlainTextResponse("tight")

    client = make_client(limiter, routes=[Route("/tight", tight), Route("/other", ok)])
    assert statuses(client, "/tight", 5) == [200, 429, 429, 429, 429]
    # Only the admitted request counted against the application limit.
    response = client.get("/other")
    assert parse_sf_list(response.headers["ratelimit"]) == [("app-per-minute", {"r": 8, "t": 60})]


def test_defaults_apply_per_route_and_only_without_own_limits(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, default_limits="2/minute")

    @limiter.limit("5/minute")
    async def own(request: Request) -> PlainTextResponse:
        return PlainTextResponse("own")

    client = make_client(limiter, routes=[Route("/a", ok), Route("/b", ok), Route("/own", own)])
    assert statuses(client, "/a", 3) == [200, 200, 429]
    assert statuses(client, "/b", 2) == [200, 200]  # its own bucket
    assert statuses(client, "/own", 5) == [200] * 5


def test_defaults_cover_methods_the_route_limit_does_not(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, default_limits="1/minute")

    @limiter.limit("5/minute", methods=["POST"])
    async def upload(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x")

    client = make_client(limiter, routes=[Route("/", upload, methods=["GET", "POST"])])
    assert statuses(client, n=2) == [200, 429]  # GET: the default
    assert [client.post("/").status_code for _ in range(3)] == [200] * 3  # POST: its own


def test_limits_on_a_wrapped_endpoint_are_found(clock: FakeClock) -> None:
    import functools

    limiter = Limiter(clock=clock)

    @limiter.limit("1/minute")
    async def inner(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x")

    @functools.wraps(inner)
    async def outer(request: Request) -> PlainTextResponse:
        return await inner(request)

    client = make_client(limiter, routes=[Route("/", outer)])
    assert statuses(client, n=2) == [200, 429]


def test_override_defaults_false_keeps_the_defaults(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, default_limits="2/minute")
    client = make_client(limiter, decorate=limiter.limit("5/minute", override_defaults=False))
    assert statuses(client, n=3) == [200, 200, 429]


def test_application_limits_are_shared_across_routes(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, application_limits="3/minute")
    client = make_client(limiter, routes=[Route("/a", ok), Route("/b", ok)])
    assert [client.get(p).status_code for p in ("/a", "/b", "/a", "/b")] == [200, 200, 200, 429]


def test_route_template_is_one_bucket(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)

    @limiter.limit("2/minute")
    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(request.path_params["id"]))

    client = make_client(limiter, routes=[Route("/items/{id:int}", item)])
    assert [client.get(f"/items/{i}").status_code for i in range(3)] == [200, 200, 429]


def test_plans_for_overlong_paths_are_computed_but_not_cached(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)

    @limiter.limit("2/minute")
    async def files(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x")

    middleware = RateLimitMiddleware(Starlette(routes=[Route("/f/{rest:path}", files)]),
                                     limiter=limiter)
    client = TestClient(middleware)
    longest, overlong = "/f/" + "a" * 509, "/f/" + "b" * 510  # 512 and 513 characters
    assert [client.get(p).status_code for p in (longest, overlong, overlong)] == [200, 200, 429]
    plans = middleware._planner.plans
    assert [len(path) for *_, path in plans] == [512]  # still one route's bucket


def test_shared_limit_spans_routes(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)
    search = limiter.shared_limit("2/minute", scope="search")

    @search
    async def books(request: Request) -> PlainTextResponse:
        return PlainTextResponse("books")

    @search
    async def films(request: Request) -> PlainTextResponse:
        return PlainTextResponse("films")

    client = make_client(limiter, routes=[Route("/books", books), Route("/films", films)])
    assert [client.get(p).status_code for p in ("/books", "/films", "/books")] == [200, 200, 429]
    assert parse_sf_list(client.get("/films").headers["ratelimit"])[0][0] == "search-per-minute"


def test_exempt_skips_defaults_and_application_limits(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, default_limits="1/minute", application_limits="1/minute")

    @limiter.exempt
    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("up")

    client = make_client(limiter, routes=[Route("/health", health)])
    assert statuses(client, "/health", 3) == [200, 200, 200]
    assert "ratelimit" not in client.get("/health").headers


def test_exempt_when(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)

    async def is_internal(request: Request) -> bool:
        return request.headers.get("x-internal") == "yes"

    client = make_client(limiter, decorate=limiter.limit("1/minute", exempt_when=is_internal))
    assert statuses(client, n=3, headers={"x-internal": "yes"}) == [200, 200, 200]
    assert statuses(client, n=2) == [200, 429]


def test_methods_and_per_method(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)

    @limiter.limit("1/minute", methods=["POST"])
    async def only_post(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x")

    @limiter.limit("1/minute", per_method=True)
    async def each(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x")

    client = make_client(
        limiter,
        routes=[
            Route("/only-post", only_post, methods=["GET", "POST"]),
            Route("/each", each, methods=["GET", "POST"]),
        ],
    )
    assert statuses(client, "/only-post", 3) == [200, 200, 200]
    assert [client.post("/only-post").status_code for _ in range(2)] == [200, 429]
    assert [client.get("/each").status_code, client.post("/each").status_code] == [200, 200]
    assert client.get("/each").status_code == 429


def test_rules_limit_routes_you_do_not_own(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)
    mounted = Router(routes=[Route("/a", ok), Route("/b", ok)])
    client = make_client(
        limiter,
        routes=[Mount("/vendor", app=mounted), Route("/mine", ok)],
        rules=[Rule("/vendor/*", "2/minute"), Rule("/mine", "1/minute", methods=["POST"])],
    )
    assert [client.get(p).status_code for p in ("/vendor/a", "/vendor/b", "/vendor/a")] == [
        200,
        200,
        429,
    ]
    assert statuses(client, "/mine", 3) == [200, 200, 200]
    assert [client.post("/mine").status_code for _ in range(2)] == [405, 429]


def test_rules_on_the_limiter_apply_to_every_middleware(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, rules=[Rule("/*", "1/minute")])
    client = make_client(limiter)
    assert statuses(client, n=2) == [200, 429]


def test_mounted_sub_app_decorators_and_templates(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)

    @limiter.limit("1/minute")
    async def user(request: Request) -> PlainTextResponse:
        return PlainTextResponse("u")

    sub = Starlette(routes=[Route("/users/{uid}", user)])
    client = make_client(limiter, routes=[Mount("/v1", app=sub)])
    assert [client.get(f"/v1/users/{i}").status_code for i in range(2)] == [200, 429]


def test_unmatched_paths_share_one_default_bucket(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, default_limits="2/minute")
    client = make_client(limiter)
    assert [client.get(f"/nope/{i}").status_code for i in range(3)] == [404, 404, 429]


def test_class_based_endpoint_method_limits(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)

    class Items(HTTPEndpoint):
        @limiter.limit("1/minute")
        async def post(self, request: Request) -> PlainTextResponse:
            return PlainTextResponse("created")

        async def get(self, request: Request) -> PlainTextResponse:
            return PlainTextResponse("list")

    client = make_client(limiter, routes=[Route("/items", Items)])
    assert statuses(client, "/items", 3) == [200, 200, 200]
    assert [client.post("/items").status_code for _ in range(2)] == [200, 429]


def test_sync_endpoint(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)

    @limiter.limit("1/minute")
    def sync_view(request: Request) -> PlainTextResponse:
        return PlainTextResponse("sync")

    client = make_client(limiter, routes=[Route("/", sync_view)])
    assert statuses(client, n=2) == [200, 429]


# -- callables ---------------------------------------------------------------------------------


def plan_limit(request: Request) -> str:
    return "3/minute" if request.headers.get("x-plan") == "pro" else "1/minute"


async def async_plan_limit(request: Request) -> str:
    await asyncio.sleep(0)
    return plan_limit(request)


@pytest.mark.parametrize("limit", [plan_limit, async_plan_limit], ids=["sync", "async"])
def test_callable_limits_give_per_plan_tiers(clock: FakeClock, limit: Any) -> None:
    limiter = Limiter(clock=clock, key=keys.header("x-user"))
    client = make_client(limiter, decorate=limiter.limit(limit, fallback="1/minute"))
    free = {"x-user": "free-user"}
    pro = {"x-user": "pro-user", "x-plan": "pro"}
    assert statuses(client, n=2, headers=free) == [200, 429]
    assert statuses(client, n=4, headers=pro) == [200, 200, 200, 429]


async def async_key(request: Request) -> str:
    await asyncio.sleep(0)
    return request.headers.get("x-user", "anon")


def sync_key(request: Request) -> str:
    return request.headers.get("x-user", "anon")


@pytest.mark.parametrize("key", [sync_key, async_key], ids=["sync", "async"])
def test_key_functions_sync_and_async(clock: FakeClock, key: Any) -> None:
    limiter = Limiter(clock=clock, key=key)
    client = make_client(limiter, decorate=limiter.limit("1/minute"))
    assert statuses(client, n=2, headers={"x-user": "alice"}) == [200, 429]
    assert statuses(client, n=1, headers={"x-user": "bob"}) == [200]


async def async_cost(request: Request) -> int:
    return int(request.headers.get("x-cost", "1"))


@pytest.mark.parametrize(
    "cost", [lambda r: int(r.headers.get("x-cost", "1")), async_cost], ids=["sync", "async"]
)
def test_cost_callables_are_reported_in_headers(clock: FakeClock, cost: Any) -> None:
    limiter = Limiter(clock=clock)
    client = make_client(limiter, decorate=limiter.limit("10/minute", cost=cost))
    response = client.get("/", headers={"x-cost": "4"})
    assert parse_sf_list(response.headers["ratelimit"]) == [("per-minute", {"r": 6, "t": 60})]
    response = client.get("/", headers={"x-cost": "7"})
    assert response.status_code == 429
    assert parse_sf_list(response.headers["ratelimit"]) == [("per-minute", {"r": 6, "t": 60})]


def test_a_raising_key_function_counts_by_address_and_never_500s(clock: FakeClock) -> None:
    def broken(request: Request) -> str:
        raise RuntimeError("token parser exploded")

    limiter = Limiter(clock=clock, key=broken)
    client = make_client(limiter, decorate=limiter.limit("1/minute"))
    assert statuses(client, n=2) == [200, 429]


def broken_key(request: Request) -> str:
    raise RuntimeError("token parser exploded")


class ExplodingClientIP(keys.client_ip):
    """A ``client_ip`` that cannot resolve anything: the last resort must hold."""

    def __call__(self, request: Any) -> str:
        raise RuntimeError("no address today")


def peers(client: TestClient, *sent: tuple[str, dict[str, str]]) -> list[int]:
    """One request per (peer address, headers), all to the same app."""
    return [
        TestClient(client.app, client=(peer, 50000)).get("/", headers=headers).status_code
        for peer, headers in sent
    ]


PROXY = "10.0.0.1"


@pytest.mark.parametrize(
    ("limiter_key", "sent", "expected"),
    [
        pytest.param(
            keys.client_ip(trusted_proxies=["10.0.0.0/8"]),
            [(PROXY, {"x-forwarded-for": "198.51.100.1"}),
             (PROXY, {"x-forwarded-for": "198.51.100.2"}),
             (PROXY, {"x-forwarded-for": "198.51.100.1"})],
            [200, 200, 429],
            id="behind a trusted proxy: each forwarded client has its bucket",
        ),
        pytest.param(
            keys.client_ip(trusted_proxies=["10.0.0.0/8"]),
            [("203.0.113.7", {"x-forwarded-for": "198.51.100.1"}),
             ("203.0.113.7", {"x-forwarded-for": "198.51.100.2"})],
            [200, 429],
            id="an untrusted peer's header is still ignored",
        ),
        pytest.param(
            keys.client_ip(ipv6_prefix=48),
            [("2001:db8:1:1::1", {}), ("2001:db8:1:2::1", {})],
            [200, 429],
            id="IPv6 grouped by the limiter's prefix",
        ),
        pytest.param(
            keys.header("x-api-key", fallback=keys.client_ip(trusted_proxies=["10.0.0.0/8"])),
            [(PROXY, {"x-forwarded-for": "198.51.100.1"}),
             (PROXY, {"x-forwarded-for": "198.51.100.2"})],
            [200, 200],
            id="the client_ip a header key falls back to",
        ),
        pytest.param(
            None,
            [("2001:db8:1:2::1", {}), ("2001:db8:1:2::2", {}), ("2001:db8:1:3::1", {})],
            [200, 429, 200],
            id="no client_ip configured: keys.client_ip(), IPv6 by /64",
        ),
        pytest.param(
            ExplodingClientIP(),
            [("203.0.113.7", {}), ("198.51.100.1", {}), ("203.0.113.7", {})],
            [200, 200, 429],
            id="the limiter's client_ip fails too: the peer address, never a 500",
        ),
    ],
)  # fmt: skip
def test_a_raising_key_function_counts_by_the_limiters_client_ip(
    clock: FakeClock,
    limiter_key: Any,
    sent: list[tuple[str, dict[str, str]]],
    expected: list[int],
) -> None:
    limiter = Limiter(clock=clock, key=limiter_key)
    client = make_client(limiter, decorate=limiter.limit("1/minute", key=broken_key))
    assert peers(client, *sent) == expected


def test_a_raising_key_function_shares_the_addresss_own_bucket(clock: FakeClock) -> None:
    """Making the key fail earns no quota beyond what leaving the session out earns."""
    by_address = keys.client_ip(trusted_proxies=["10.0.0.0/8"])

    def session_or_ip(request: Request) -> str:
        session = request.headers.get("x-session")
        if session is None:
            return by_address(request)
        return f"session:{int(session)}"  # raises on a malformed session id

    limiter = Limiter(clock=clock, key=session_or_ip)
    client = make_client(limiter, decorate=limiter.limit("2/minute"))
    anonymous: dict[str, str] = {}
    failing = {"x-session": "garbled"}
    assert [client.get("/", headers=h).status_code for h in (anonymous, failing)] == [200, 200]
    assert [client.get("/", headers=h).status_code for h in (anonymous, failing)] == [429, 429]
    assert statuses(client, headers={"x-session": "7"}) == [200]


def test_key_function_failures_are_logged_once_per_incident(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = Limiter(clock=clock, key=broken_key)
    client = make_client(limiter, decorate=limiter.limit("1000/minute"))

    def logged() -> list[Any]:
        return [r for r in caplog.records if getattr(r, "ratemw", {}).get("event")
                == "key_function_failed"]

    with caplog.at_level("WARNING", logger="ratemw"):
        assert set(statuses(client, n=5)) == {200}
        clock.advance(30)
        statuses(client, n=3)
        [first] = logged()  # eight failures, one line: the first, with its traceback
        assert first.exc_info is not None
        assert first.ratemw == {  # type: ignore[attr-defined]
            "event": "key_function_failed", "key_function": repr(broken_key), "suppressed": 0,
        }
        clock.advance(31)  # the incident goes on; a minute since the first line
        statuses(client, n=2)
        [_, summary] = logged()
        assert summary.exc_info is None
        assert summary.ratemw["suppressed"] == 7  # type: ignore[attr-defined]
        assert "7 failures not logged" in summary.getMessage()
        assert "token parser exploded" in summary.getMessage()
        clock.advance(61)  # a quiet minute ends the incident: the next failure starts one
        statuses(client)
        [_, _, again] = logged()
        assert again.exc_info is not None
        assert "1 earlier failures were not logged" in again.getMessage()
        assert again.ratemw["suppressed"] == 1  # type: ignore[attr-defined]


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

    client = make_client(limiter, routes=[
        Route("/pay", payments), Route("/search", search), Route("/other", ok),
        Route("/ruled", ok),
    ], rules=[Rule("/ruled", "5/minute", failure_mode="deny")])
    assert client.get("/pay").status_code == 503  # deny beats the limiter's allow
    assert statuses(client, "/search", 2) == [200, 429]  # fallback: memory limits
    assert statuses(client, "/other", 3) == [200, 200, 200]  # the limiter's allow
    assert client.get("/ruled").status_code == 503


def test_unknown_per_limit_failure_mode_is_refused() -> None:
    from ratemw import ConfigurationError

    with pytest.raises(ConfigurationError, match="'explode'"):
        Limiter().limit("5/minute", failure_mode="explode")


# -- protocol details ----------------------------------------------------------------------------


async def test_streaming_passes_through_chunk_by_chunk() -> None:
    limiter = Limiter()
    second_chunk_allowed = anyio.Event()
    received: list[bytes] = []

    @limiter.limit("10/minute")
    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> Any:
            yield b"first"
            await second_chunk_allowed.wait()  # blocks until the caller saw the first chunk
            yield b"second"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/", stream)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [],
        "query_string": b"",
        "client": ("1.2.3.4", 1),
        "server": ("test", 80),
        "scheme": "http",
        "root_path": "",
        "http_version": "1.1",
    }
    start: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        await anyio.sleep_forever()
        return {}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message.get("body"):
            received.append(message["body"])
            if message["body"] == b"first":
                second_chunk_allowed.set()

    with anyio.fail_after(5):
        await app(scope, receive, send)
    assert received == [b"first", b"second"]
    assert (b"ratelimit", b'"per-minute";r=9;t=60') in start["headers"]


async def test_no_over_admission_under_100_concurrent_tasks() -> None:
    async def slow_key(request: Request) -> str:
        await asyncio.sleep(0.001)  # let the tasks interleave inside the decision
        return "one-caller"

    limiter = Limiter(key=slow_key)
    app = Starlette(routes=[Route("/", limiter.limit("10/minute")(ok))])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        responses = await asyncio.gather(*(client.get("/") for _ in range(100)))
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 10
    assert codes.count(429) == 90


def test_websocket_handshake_refused_with_429(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)

    @limiter.limit("1/minute")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    client = make_client(limiter, routes=[WebSocketRoute("/ws", echo)])
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_text() == "hi"
    with pytest.raises(WebSocketDenialResponse) as info, client.websocket_connect("/ws"):
        pass
    assert info.value.status_code == 429
    assert info.value.headers["retry-after"] == "60"
    assert json.loads(info.value.content)["violated-policies"] == ["per-minute"]


async def test_websocket_refused_with_close_1008_without_denial_extension() -> None:
    limiter = Limiter()

    @limiter.limit("1/minute")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/ws", echo)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)

    assert (await websocket_handshake(app))[0]["type"] == "websocket.accept"
    refused = await websocket_handshake(app)
    assert refused == [{"type": "websocket.close", "code": 1008, "reason": "rate limit exceeded"}]


async def test_lifespan_and_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = RateLimitMiddleware(app, limiter=Limiter(default_limits="1/minute"))
    await middleware({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"]


def test_plain_asgi_app_without_routes_uses_rules_and_defaults(clock: FakeClock) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("raw")(scope, receive, send)

    limiter = Limiter(clock=clock, default_limits="1/minute")
    client = TestClient(RateLimitMiddleware(app, limiter=limiter))
    assert statuses(client, n=2) == [200, 429]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([(b"x-forwarded-for", b"\xff\xfe garbage")], id="non-utf8 xff"),
        pytest.param([(b"x-api-key", b"k" * 1_000_000)], id="1 MB api key"),
        pytest.param([(b"forwarded", b'for="[::1%25eth0]"' * 1000)], id="huge forwarded"),
    ],
)
async def test_hostile_headers_never_500(headers: list[tuple[bytes, bytes]]) -> None:
    limiter = Limiter(key=keys.header("x-api-key"))
    app = Starlette(routes=[Route("/ünïcode/{x}", limiter.limit("1/minute")(ok))])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    codes = []
    for _ in range(2):
        sent: list[dict[str, Any]] = []
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/ünïcode/✓",
            "headers": headers,
            "query_string": b"",
            "client": None,
            "server": None,
            "scheme": "http",
            "root_path": "",
            "http_version": "1.1",
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
            sent.append(message)

        await app(scope, receive, send)
        codes.append(sent[0]["status"])
    assert codes == [200, 429]


# -- strategies beyond windows, concurrency, refunds ------------------------------------------


def test_gcra_end_to_end_with_burst(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, strategy="gcra")
    client = make_client(limiter, decorate=limiter.limit("6/minute burst 2"))
    assert statuses(client, n=2) == [200, 200]
    response = client.get("/")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "10"  # one request every 10 s
    assert "bursts of 2" in response.json()["detail"]
    clock.advance(10)
    assert statuses(client, n=2) == [200, 429]


def test_a_burst_without_gcra_is_a_configuration_error() -> None:
    from ratemw import ConfigurationError

    limiter = Limiter()
    with pytest.raises(ConfigurationError, match="burst"):
        limiter.limit("6/minute burst 2")
    with pytest.raises(ConfigurationError, match="burst"):
        Limiter(default_limits="6/minute burst 2")


def test_concurrency_headers_and_refusal(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)
    client = make_client(limiter, decorate=limiter.limit("2 concurrent"))
    response = client.get("/")
    assert parse_sf_list(response.headers["ratelimit-policy"]) == [
        ("concurrent", {"q": 2, "qu": "concurrent-requests"})
    ]
    # Each request finished before the next began: the slot came back every time.
    assert statuses(client, n=5) == [200] * 5


async def test_concurrency_slots_return_after_streams_disconnects_and_errors() -> None:
    limiter = Limiter()
    release_streams = anyio.Event()

    @limiter.limit("2 concurrent")
    async def slow(request: Request) -> StreamingResponse:
        async def body() -> Any:
            yield b"start"
            await release_streams.wait()
            yield b"end"

        return StreamingResponse(body())

    @limiter.limit("2 concurrent")
    async def boom(request: Request) -> PlainTextResponse:
        raise RuntimeError("app failure")

    app = Starlette(routes=[Route("/slow", slow), Route("/boom", boom)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    storage = limiter.backends.sync
    transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)

    def in_flight() -> int:
        return sum(len(state) for state, _ in storage._data.values())  # type: ignore[attr-defined]

    async with httpx2.AsyncClient(transport=transport, base_url="http://t") as client:
        async with anyio.create_task_group() as tg:
            async def stream() -> None:
                async with client.stream("GET", "/slow") as response:
                    assert response.status_code == 200
                    async for _ in response.aiter_bytes():
                        pass
            tg.start_soon(stream)
            tg.start_soon(stream)
            with anyio.fail_after(5):
                while in_flight() < 2:
                    await anyio.sleep(0.01)
            assert (await client.get("/slow")).status_code == 429
            release_streams.set()
        assert in_flight() == 0
        assert (await client.get("/boom")).status_code == 500
        assert in_flight() == 0


async def test_concurrency_slot_freed_when_the_client_disconnects() -> None:
    limiter = Limiter()
    started = anyio.Event()

    @limiter.limit("1 concurrent")
    async def wait_for_disconnect(request: Request) -> PlainTextResponse:
        started.set()
        while not await request.is_disconnected():
            await anyio.sleep(0.01)
        return PlainTextResponse("gone")

    app = Starlette(routes=[Route("/", wait_for_disconnect)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b"",
             "client": ("1.2.3.4", 1), "server": ("t", 80), "scheme": "http", "root_path": "",
             "http_version": "1.1"}
    messages = [{"type": "http.request", "body": b""}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        return {"type": "http.disconnect"}  # the client is gone

    async def send(message: dict[str, Any]) -> None:
        pass

    storage = limiter.backends.sync
    with anyio.fail_after(5):
        await app(scope, receive, send)
    assert started.is_set()
    assert all(not state for state, _ in storage._data.values())  # type: ignore[attr-defined]


def test_deduct_when_refunds_server_errors(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)
    failing = {"now": True}

    @limiter.limit("2/minute", deduct_when=lambda response: response.status_code < 500)
    async def flaky(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x", status_code=503 if failing["now"] else 200)

    client = make_client(limiter, routes=[Route("/", flaky)])
    assert statuses(client, n=4) == [503] * 4  # server errors do not count
    failing["now"] = False
    assert statuses(client, n=3) == [200, 200, 429]


async def async_not_modified(response: Any) -> bool:
    return bool(response.status_code != 304)


def test_async_deduct_when_and_raising_one(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)

    @limiter.limit("1/minute", deduct_when=async_not_modified)
    async def cached(request: Request) -> PlainTextResponse:
        return PlainTextResponse("", status_code=304)

    def broken(response: Any) -> bool:
        raise RuntimeError("deduct_when bug")

    @limiter.limit("1/minute", deduct_when=broken)
    async def other(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x")

    client = make_client(limiter, routes=[Route("/cached", cached), Route("/other", other)])
    assert statuses(client, "/cached", 3) == [304, 304, 304]
    assert statuses(client, "/other", 2) == [200, 429]  # a raising deduct_when: it counts


def test_pluggable_strategy(clock: FakeClock) -> None:
    from ratemw.storage import Hit, Usage
    from ratemw.storage._strategies import STRATEGY_IMPLEMENTATIONS, register_strategy

    class EveryOther:
        """Admit every other request, whatever the quota (a toy)."""

        name = "every-other"

        def check(self, state: Any, now: int, hit: Hit) -> Usage:
            count = state or 0
            return Usage(count % 2 == 0, hit.amount, 1000, 0 if count % 2 == 0 else 1000, now)

        def consume(self, state: Any, now: int, hit: Hit) -> Any:
            return (state or 0) + 1

        def refund(self, state: Any, now: int, hit: Hit, stamp: int) -> Any:
            return state

        def expires(self, state: Any, hit: Hit) -> int:
            return 2**62

    register_strategy(EveryOther())
    try:
        limiter = Limiter(clock=clock, strategy="every-other")
        client = make_client(limiter, decorate=limiter.limit("5/minute"))
        assert statuses(client, n=3) == [200, 429, 429]
        from ratemw import ConfigurationError

        with pytest.raises(ConfigurationError, match="'every-other' is not served by 'redis'"):
            Limiter(storage="redis://localhost:6379", strategy="every-other")
    finally:
        del STRATEGY_IMPLEMENTATIONS["every-other"]
