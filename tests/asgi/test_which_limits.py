"""Which limits apply to a request: decorators, defaults, rules, mounts, methods."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route, Router
from starlette.testclient import TestClient

from ratemw import Limiter, RateLimitMiddleware, Rule
from ratemw.testing import FakeClock
from tests.asgi._helpers import statuses
from tests.conftest import make_client, ok, parse_sf_list

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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

    middleware = RateLimitMiddleware(
        Starlette(routes=[Route("/f/{rest:path}", files)]), limiter=limiter
    )
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
