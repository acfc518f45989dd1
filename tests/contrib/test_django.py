"""The Django integration: the middleware under WSGI and ASGI, settings, keys, the example."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ratemw import ConfigurationError, Limiter, RateLimitExceeded, Rule, keys
from ratemw.testing import FakeClock
from ratemw.wsgi import WSGIRateLimitMiddleware
from tests.contrib._helpers import assert_third_item_refused, codes, recorded_lines
from tests.contrib.django_setup import MIDDLEWARE, configure_django, project
from tests.contrib.live_server import get, gunicorn

configure_django()

from asgiref.sync import iscoroutinefunction, markcoroutinefunction  # noqa: E402
from django.core.exceptions import SynchronousOnlyOperation  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse  # noqa: E402
from django.test import AsyncClient, Client, override_settings  # noqa: E402
from django.urls import include, path, re_path  # noqa: E402
from django.views import View  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402
from werkzeug.test import Client as WSGIClient  # noqa: E402

from ratemw.contrib.django import (  # noqa: E402
    DjangoRoutes,
    RateLimitMiddleware,
    get_limiter,
    resolve_view,
    user_or_ip,
)


def ok(request: HttpRequest, **kwargs: Any) -> HttpResponse:
    return HttpResponse("ok")


def acodes(*paths: str, **extra: Any) -> list[int]:
    """Statuses of ``paths``, fetched in turn through Django's ASGI handler."""

    async def fetch() -> list[int]:
        client = AsyncClient()
        return [(await client.get(p, **extra)).status_code for p in paths]

    return asyncio.run(fetch())


# -- finding the view -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path_info", "template"),
    [
        pytest.param("/items/7/", "items/<int:pk>/", id="path()"),
        pytest.param("/api/v1/things/x/", "api/v1/things/<slug:name>/", id="include() joins"),
        pytest.param("/legacy/12/", "^legacy/(?P<pk>[0-9]+)/$", id="re_path()"),
        pytest.param("/items/x/", None, id="converter refuses: 404"),
        pytest.param("/nowhere/", None, id="404"),
    ],
)
def test_resolve_view_answers_the_view_and_its_pattern(
    path_info: str, template: str | None
) -> None:
    patterns = [
        path("items/<int:pk>/", ok),
        path("api/v1/", include([path("things/<slug:name>/", ok)])),
        re_path(r"^legacy/(?P<pk>[0-9]+)/$", ok),
    ]
    with project(None, *patterns):
        view, route = resolve_view(path_info)
    assert route == template
    assert view is (ok if template else None)


def test_every_pk_is_one_bucket(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)
    item = limiter.limit("2/minute")(lambda request, pk: HttpResponse("item"))
    other = limiter.limit("2/minute")(lambda request, pk: HttpResponse("other"))
    with project(limiter, path("items/<int:pk>/", item), path("other/<int:pk>/", other)):
        client = Client()
        assert codes(client, "/items/1/", "/items/2/", "/items/3/") == [200, 200, 429]
        assert codes(client, "/other/1/") == [200]


class _Base(View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("get")

    def post(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("post")


def _limit_get(limiter: Limiter) -> Callable[..., Any]:
    class Items(_Base):
        @limiter.limit("1/minute")
        def get(self, request: HttpRequest) -> HttpResponse:
            return HttpResponse("get")

    return Items.as_view()


def _limit_class(limiter: Limiter) -> Callable[..., Any]:
    return limiter.limit("1/minute")(type("Items", (_Base,), {})).as_view()


def _limit_view_function(limiter: Limiter) -> Callable[..., Any]:
    return limiter.limit("1/minute")(type("Items", (_Base,), {}).as_view())


def _limit_behind_a_decorator(limiter: Limiter) -> Callable[..., Any]:
    return csrf_exempt(limiter.limit("1/minute")(type("Items", (_Base,), {})).as_view())


@pytest.mark.parametrize(
    ("make_view", "post"),
    [
        pytest.param(_limit_get, 200, id="on the get method: POST free"),
        pytest.param(_limit_class, 429, id="on the class"),
        pytest.param(_limit_view_function, 429, id="on the as_view() function"),
        pytest.param(_limit_behind_a_decorator, 429, id="behind csrf_exempt"),
    ],
)
def test_class_based_views(
    clock: FakeClock, make_view: Callable[[Limiter], Callable[..., Any]], post: int
) -> None:
    limiter = Limiter(clock=clock, default_limits="100/minute")
    with project(limiter, path("items/", make_view(limiter))):
        client = Client(enforce_csrf_checks=False)
        assert codes(client, "/items/", "/items/") == [200, 429]
        assert codes(client, "/items/", method="post") == [post]


def test_exempt_shared_and_default_limits(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, default_limits="1/minute")
    search = limiter.shared_limit("2/minute", scope="search")
    patterns = [
        path("health/", limiter.exempt(lambda request: HttpResponse("ok"))),
        path("books/", search(lambda request: HttpResponse("books"))),
        path("films/", search(lambda request: HttpResponse("films"))),
    ]
    with project(limiter, *patterns):
        client = Client()
        assert codes(client, "/health/", "/health/", "/health/") == [200, 200, 200]
        assert "RateLimit" not in client.get("/health/").headers
        assert codes(client, "/books/", "/films/", "/books/") == [200, 200, 429]
        assert codes(client, "/nowhere/", "/elsewhere/") == [404, 429]


# -- what the caller sees -------------------------------------------------------------------


def test_success_headers_and_the_429(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)
    calls: list[str] = []

    @limiter.limit("1/minute")
    def view(request: HttpRequest) -> HttpResponse:
        calls.append(request.path)
        return HttpResponse("ok", headers={"X-View": "yes"})

    with project(limiter, path("v/", view)):
        client = Client()
        success = client.get("/v/")
        clock.advance(45)
        refused = client.get("/v/")
    assert success.headers["X-View"] == "yes"
    assert success.headers["RateLimit-Policy"] == '"per-minute";q=1;w=60'
    assert success.headers["RateLimit"] == '"per-minute";r=0;t=60'
    assert "Retry-After" not in success.headers
    assert calls == ["/v/"]
    assert refused.status_code == 429
    assert refused.reason_phrase == "Too Many Requests"
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert refused.headers["Cache-Control"] == "no-store"
    assert refused.headers["Retry-After"] == "15"
    assert refused.headers["Content-Length"] == str(len(refused.content))
    assert json.loads(refused.content)["instance"] == "/v/"


def test_repeated_header_names_are_joined(clock: FakeClock) -> None:
    # draft-10 and draft-7 both send RateLimit and RateLimit-Policy; Django keeps one value
    # per name, so the field lines are joined as HTTP allows.
    limiter = Limiter(clock=clock, default_limits="5/minute", headers=["draft-10", "draft-7"])
    with project(limiter, path("v/", ok)):
        response = Client().get("/v/")
    assert response.headers["RateLimit"] == (
        '"per-minute";r=4;t=60, limit=5, remaining=4, reset=60'
    )


def test_streamed_response_keeps_streaming(clock: FakeClock) -> None:
    produced: list[int] = []

    def stream(request: HttpRequest) -> StreamingHttpResponse:
        return StreamingHttpResponse(recorded_lines(produced))

    with project(Limiter(clock=clock, default_limits="5/minute"), path("s/", stream)):
        response = Client().get("/s/")
    assert response.headers["RateLimit"] == '"per-minute";r=4;t=60'
    assert produced == []
    assert b"".join(response.streaming_content) == b"line 0\nline 1\nline 2\n"  # type: ignore[arg-type]


def _stream(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(iter(["one", "two"]))


def test_concurrency_slot_is_held_while_a_response_streams() -> None:
    limiter = Limiter()
    with project(limiter, path("s/", limiter.limit("1 concurrent")(_stream))):
        client = Client()
        first = client.get("/s/")
        assert codes(client, "/s/") == [429]  # the first body is still to be sent
        assert b"".join(first.streaming_content) == b"onetwo"  # the client closes it
        assert codes(client, "/s/") == [200]


@pytest.mark.parametrize(
    "fetch", [pytest.param(codes, id="wsgi"), pytest.param(lambda _, *p: acodes(*p), id="asgi")]
)
def test_concurrency_slot_is_freed_with_the_response(fetch: Any) -> None:
    limiter = Limiter()
    with project(limiter, path("v/", limiter.limit("1 concurrent")(_async_view))):
        assert fetch(Client(), "/v/", "/v/", "/v/") == [200, 200, 200]


def test_deduct_when_sees_the_response(clock: FakeClock) -> None:
    def view(request: HttpRequest, found: str) -> HttpResponse:
        return HttpResponse(status=200 if found == "yes" else 404)

    limiter = Limiter(clock=clock)
    limited = limiter.limit("1/minute", deduct_when=lambda r: r.status_code < 400)(view)
    with project(limiter, path("<found>/", limited)):
        client = Client()
        assert codes(client, "/no/", "/no/", "/no/") == [404, 404, 404]
        assert codes(client, "/yes/", "/yes/") == [200, 429]


def test_storage_failure_with_deny_answers_503(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    limiter = Limiter(clock=clock, default_limits="5/minute", failure_mode="deny")

    def broken(hits: Any) -> Any:
        raise ConnectionError("storage down")

    monkeypatch.setattr(limiter.backends.sync, "acquire", broken)
    with project(limiter, path("v/", ok)):
        response = Client().get("/v/")
    assert response.status_code == 503
    assert response.headers["Content-Type"] == "application/problem+json"
    assert json.loads(response.content)["status"] == 503


def _handler(request: HttpRequest, exc: RateLimitExceeded) -> HttpResponse:
    return HttpResponse(f"{request.path} wait {exc.retry_after}", status=429)


@pytest.mark.parametrize(
    "handler",
    [pytest.param(_handler, id="callable"), pytest.param(f"{__name__}._handler", id="dotted path")],
)
def test_handler_from_settings(clock: FakeClock, handler: Any) -> None:
    limiter = Limiter(clock=clock, default_limits="1/minute")
    with project(limiter, path("v/", ok), RATEMW={"handler": handler}):
        client = Client()
        client.get("/v/")
        refused = client.get("/v/")
    assert (refused.status_code, refused.content) == (429, b"/v/ wait 60")


# -- configuration from settings ------------------------------------------------------------


def test_limiter_built_from_settings(clock: FakeClock) -> None:
    options = {
        "default_limits": "100/minute",
        "rules": [{"path": "/api/*", "limit": "1/minute"}, Rule("/static/*", "1/minute")],
        "key": "ratemw.contrib.django.user_or_ip",  # a class: instantiated
        "clock": clock,
    }
    with project(None, path("api/v/", ok), RATEMW=options):
        limiter = get_limiter()
        assert get_limiter() is limiter  # one per process
        assert isinstance(limiter.key, user_or_ip)
        client = Client()
        assert codes(client, "/api/v/", "/api/v/") == [200, 429]
    with project(None, RATEMW={"default_limits": "1/minute"}):
        assert get_limiter() is not limiter  # rebuilt when the settings change


def test_limiter_named_by_dotted_path() -> None:
    with project(f"{__name__}.NAMED_LIMITER", path("v/", ok)):
        assert get_limiter() is NAMED_LIMITER
        assert codes(Client(), "/v/", "/v/") == [200, 429]


NAMED_LIMITER = Limiter(default_limits="1/minute")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param({"RATEMW_LIMITER": None}, "ratemw is not configured", id="nothing"),
        pytest.param(
            {"RATEMW_LIMITER": None, "RATEMW": {"default_limit": "1/minute"}},
            r"unknown settings.RATEMW key\(s\) \['default_limit'\]",
            id="unknown key",
        ),
        pytest.param(
            {"RATEMW_LIMITER": Limiter(), "RATEMW": {"default_limits": "1/minute"}},
            "may only hold middleware options",
            id="both",
        ),
        pytest.param(
            {"RATEMW_LIMITER": "tests.nowhere.limiter"},
            "settings.RATEMW_LIMITER: cannot import 'tests.nowhere.limiter'",
            id="bad dotted path",
        ),
        pytest.param(
            {"RATEMW_LIMITER": f"{__name__}.ok"}, "must name a ratemw.Limiter", id="not a Limiter"
        ),
        pytest.param(
            {"RATEMW_LIMITER": None, "RATEMW": {"default_limits": "lots"}},
            "invalid limit 'lots'",
            id="bad limit",
        ),
        pytest.param(
            {"RATEMW_LIMITER": None, "RATEMW": {"rules": [{"path": "/a"}]}},
            "bad rule",
            id="bad rule",
        ),
        pytest.param(
            {"RATEMW_LIMITER": None, "RATEMW": {"rules": ["/a"]}},
            "expected a ratemw.Rule or a dict",
            id="rule of the wrong type",
        ),
        pytest.param(
            {"RATEMW_LIMITER": Limiter(), "RATEMW": {"handler": 42}},
            r"settings.RATEMW\['handler'\] must be callable",
            id="handler",
        ),
    ],
)
def test_bad_settings_fail_when_the_middleware_loads(
    settings: dict[str, Any], message: str
) -> None:
    with override_settings(**settings), pytest.raises(ConfigurationError, match=message):
        RateLimitMiddleware(ok)


# -- ASGI Django ----------------------------------------------------------------------------


async def _async_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def test_middleware_follows_the_chain_it_is_in() -> None:
    with project(Limiter()):
        assert not iscoroutinefunction(RateLimitMiddleware(ok))
        assert iscoroutinefunction(RateLimitMiddleware(_async_view))
    assert RateLimitMiddleware.sync_capable and RateLimitMiddleware.async_capable


async def _tenant(request: Any) -> str:
    return str(request.headers.get("x-tenant", "none"))


@pytest.mark.parametrize(
    "view", [pytest.param(ok, id="sync view"), pytest.param(_async_view, id="async view")]
)
def test_under_asgi_async_keys_are_awaited_on_the_running_loop(clock: FakeClock, view: Any) -> None:
    # The blocking driver cannot run an async key inside a running event loop (it would
    # fall back to the client address and lump both tenants together).
    limiter = Limiter(clock=clock, default_limits="1/minute", key=_tenant)
    with project(limiter, path("v/", view)):
        assert acodes("/v/", "/v/", headers={"X-Tenant": "a"}) == [200, 429]
        assert acodes("/v/", headers={"X-Tenant": "b"}) == [200]


def test_asgi_and_wsgi_share_one_count(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, default_limits="2/minute")
    with project(limiter, path("v/", ok)):
        assert acodes("/v/") + codes(Client(), "/v/", "/v/") == [200, 200, 429]


# -- user_or_ip -----------------------------------------------------------------------------


class _User:
    is_authenticated = True

    def __init__(self, pk: int) -> None:
        self.pk = pk


class _Anonymous:
    is_authenticated = False
    pk = None


class _SyncOnly:
    """A ``request.user`` that may not be touched from async code, like Django's."""

    def __getattr__(self, name: str) -> Any:
        raise SynchronousOnlyOperation("request.user from async code: use auser()")


class FakeAuthMiddleware:
    """Sets ``request.user`` / ``request.auser`` from an ``X-User`` header (no database)."""

    sync_capable = async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        header = request.headers.get("X-User")
        user = _User(int(header)) if header else _Anonymous()

        async def auser() -> Any:
            return user

        request.user = _SyncOnly() if self.is_async else user  # type: ignore[attr-defined]
        request.auser = auser  # type: ignore[attr-defined]
        return self.get_response(request)


AUTH_MIDDLEWARE = [f"{__name__}.FakeAuthMiddleware", *MIDDLEWARE]


def test_user_or_ip_counts_users_by_account(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, default_limits="1/minute", key=user_or_ip())
    with project(limiter, path("v/", ok), middleware=AUTH_MIDDLEWARE):
        client = Client()
        assert codes(client, "/v/", "/v/", headers={"X-User": "1"}) == [200, 429]
        assert codes(client, "/v/", headers={"X-User": "2"}) == [200]
        # Anonymous callers are counted by address, apart from the users.
        assert codes(client, "/v/", REMOTE_ADDR="192.0.2.1") == [200]
        assert codes(client, "/v/", REMOTE_ADDR="192.0.2.2") == [200]
        assert codes(client, "/v/", REMOTE_ADDR="192.0.2.1") == [429]


def test_user_or_ip_uses_auser_under_asgi(clock: FakeClock) -> None:
    limiter = Limiter(clock=clock, default_limits="1/minute", key=user_or_ip())
    with project(limiter, path("v/", _async_view), middleware=AUTH_MIDDLEWARE):
        assert acodes("/v/", "/v/", headers={"X-User": "1"}) == [200, 429]
        assert acodes("/v/", headers={"X-User": "2"}) == [200]


def test_user_or_ip_without_the_django_middleware_keys_by_address() -> None:
    from starlette.requests import Request

    scope = {"type": "http", "headers": [], "client": ("192.0.2.7", 1)}
    assert user_or_ip()(Request(scope)) == "192.0.2.7"
    assert user_or_ip(fallback=keys.header("X-API-Key"))(Request(scope)) == "192.0.2.7"


# -- the whole Django app under WSGIRateLimitMiddleware -----------------------------------------


@pytest.mark.parametrize(
    "routes", [pytest.param(DjangoRoutes(), id="given"), pytest.param(None, id="detected")]
)
def test_wsgi_middleware_with_django_routes(clock: FakeClock, routes: Any) -> None:
    limiter = Limiter(clock=clock, default_limits="100/minute")
    item = limiter.limit("2/minute")(lambda request, pk: HttpResponse("item"))
    with project(limiter, path("items/<int:pk>/", item), middleware=[]):
        app = WSGIRateLimitMiddleware(WSGIHandler(), limiter=limiter, routes=routes)
        assert isinstance(app.routes, DjangoRoutes)
        client = WSGIClient(app)
        statuses = [client.get(f"/items/{n}/").status_code for n in (1, 2, 3)]
    assert statuses == [200, 200, 429]


# -- the example ----------------------------------------------------------------------------


@pytest.fixture
def example_settings() -> Iterator[None]:
    from examples.django_app import limits, settings

    limits.limiter.reset()
    names = ("ROOT_URLCONF", "MIDDLEWARE", "RATEMW_LIMITER", "ALLOWED_HOSTS")
    with override_settings(**{name: getattr(settings, name) for name in names}):
        yield


@pytest.mark.usefixtures("example_settings")
def test_example_with_the_test_client() -> None:
    client = Client()
    assert codes(client, "/items/1/", "/items/2/", "/items/3/") == [200, 200, 429]
    assert b"".join(client.get("/stream/").streaming_content) == b"tick 0\ntick 1\ntick 2\n"  # type: ignore[arg-type]
    health = client.get("/health/")
    assert health.status_code == 200 and "RateLimit" not in health.headers


def test_example_under_gunicorn() -> None:
    with gunicorn("examples.django_app.wsgi") as port:
        replies = [get(port, f"/items/{n}/") for n in (1, 2, 3)]
        search = get(port, "/search/")
        health = get(port, "/health/")
    assert_third_item_refused(replies, "/items/3/")
    assert search.headers["ratelimit-policy"] == '"per-minute";q=5;w=60, "per-hour";q=100;w=3600'
    assert health.status == 200 and "ratelimit" not in health.headers


# -- the decision in the view's hands ---------------------------------------------------------


def test_current_and_block_false_in_django_views() -> None:
    import ratemw

    clock = FakeClock()
    limiter = Limiter(clock=clock)

    def told(request: HttpRequest) -> HttpResponse:
        decision = ratemw.current(request)
        if decision is None:
            return HttpResponse("none")
        return HttpResponse(
            json.dumps([decision.exceeded, [p.remaining for p in decision.policies]])
        )

    soft = limiter.limit("2/minute", block=False)(lambda request: told(request))
    hard = limiter.limit("2/minute;10/hour")(lambda request: told(request))
    with project(limiter, path("soft/", soft), path("hard/", hard), path("open/", told)):
        client = Client()
        soft_replies = [client.get("/soft/") for _ in range(3)]
        hard_replies = [client.get("/hard/") for _ in range(2)]
        assert client.get("/open/").content == b"none"
        assert acodes("/soft/") == [200]
    assert [json.loads(r.content) for r in soft_replies] == [
        [False, [1]], [False, [0]], [True, [0]]
    ]  # fmt: skip
    assert soft_replies[2]["RateLimit"] == '"per-minute";r=0;t=60'
    assert "Retry-After" not in soft_replies[2]
    assert [json.loads(r.content)[1] for r in hard_replies] == [[1, 9], [0, 8]]
    assert hard_replies[1]["RateLimit"] == '"per-minute";r=0;t=60, "per-hour";r=8;t=3600'


def test_rate_limit_exceeded_raised_in_a_view_is_the_standard_429() -> None:
    clock = FakeClock()
    limiter = Limiter(clock=clock)

    def login(request: HttpRequest) -> HttpResponse:
        limiter.hit(request.GET.get("user"), "1/minute", scope="login", request=request,
                    raise_exceeded=True)  # fmt: skip
        return HttpResponse("ok")

    async def alogin(request: HttpRequest) -> HttpResponse:
        await limiter.ahit(request.GET.get("user"), "1/minute", scope="alogin",
                           request=request, raise_exceeded=True)  # fmt: skip
        return HttpResponse("ok")

    with project(limiter, path("login/", login), path("alogin/", alogin)):
        client = Client()
        assert client.get("/login/", {"user": "a"}).status_code == 200
        clock.advance(5)
        refused = client.get("/login/", {"user": "a"})
        assert client.get("/login/", {"user": "b"}).status_code == 200
        assert acodes("/alogin/?user=a", "/alogin/?user=a") == [200, 429]
    assert refused.status_code == 429
    assert refused["Retry-After"] == "55"
    assert refused["Content-Type"] == "application/problem+json"
    assert "GET /login/" in refused.json()["detail"]


def test_the_usage_view() -> None:
    from ratemw.contrib.django import usage_view

    clock = FakeClock()
    limiter = Limiter(clock=clock, default_limits="10/minute")

    class Items(View):
        @limiter.limit("3/minute")
        def post(self, request: HttpRequest, pk: int) -> HttpResponse:
            return HttpResponse("ok")

    with project(
        limiter,
        path("search/", limiter.limit("5/minute")(ok)),
        path("api/", include([path("items/<int:pk>/", csrf_exempt(Items.as_view()))])),
        path("rate_limit", usage_view),
    ):
        client = Client()
        client.get("/search/")
        client.post("/api/items/1/")
        (search,) = client.get("/rate_limit", {"path": "/search/"}).json()["routes"]
        assert (search["route"], search["policies"][0]["remaining"]) == ("search/", 4)
        (item,) = client.get("/rate_limit", {"path": "/api/items/7/", "method": "POST"}).json()[
            "routes"
        ]
        assert (item["route"], item["policies"][0]["remaining"]) == ("api/items/<int:pk>/", 2)
        listed = client.get("/rate_limit").json()["routes"]
        assert {(r["route"], r["method"]) for r in listed} == {
            ("search/", "GET"), ("api/items/<int:pk>/", "POST")
        }  # fmt: skip
        for _ in range(30):  # exempt, and counting nothing
            assert client.get("/rate_limit").status_code == 200
        (search,) = client.get("/rate_limit", {"path": "/search/"}).json()["routes"]
        assert search["policies"][0]["remaining"] == 4
        assert client.get("/rate_limit", {"method": "NOPE"}).status_code == 400
