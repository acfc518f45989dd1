"""django-ratelimit's examples (its docs/usage.rst), with the import changed to
``ratemw.contrib.django``: each behaves as its comment says.

Without ratemw's middleware a blocked request is a 403 (``Ratelimited`` is a
``PermissionDenied``), as with django-ratelimit; with it, the standard 429.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ratemw import ConfigurationError, Limiter, RateLimitExceeded
from ratemw.testing import FakeClock
from tests.contrib.django_setup import configure_django, project

configure_django()

from django.http import HttpRequest, HttpResponse, HttpResponseForbidden  # noqa: E402
from django.test import AsyncClient, Client  # noqa: E402
from django.urls import path  # noqa: E402
from django.utils.decorators import method_decorator  # noqa: E402
from django.views import View  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402

from ratemw.contrib.django import (  # noqa: E402
    ALL,
    UNSAFE,
    Ratelimited,
    get_usage,
    is_ratelimited,
    ratelimit,
)

NO_MIDDLEWARE: list[str] = []
RATEMW_MIDDLEWARE = ["ratemw.contrib.django.RateLimitMiddleware"]
FAKE_AUTH = ["tests.contrib.test_django_ratelimit.FakeAuthentication"]


class FakeAuthentication:
    """``request.user`` from an ``X-User`` header (a pk), anonymous without one."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        pk = request.headers.get("X-User")
        request.user = types.SimpleNamespace(is_authenticated=pk is not None, pk=pk)
        return self.get_response(request)


def limited(request: HttpRequest) -> HttpResponse:
    """Tell whether the request was limited (``block=False`` views)."""
    return HttpResponse("limited" if getattr(request, "limited", False) else "ok")


# -- the examples, as django-ratelimit's docs write them ------------------------------------


@ratelimit(key="ip", rate="5/m", block=False)
def myview_annotated(request: HttpRequest) -> HttpResponse:
    # Will be true if the same IP makes more than 5 POST requests/minute.
    was_limited = getattr(request, "limited", False)
    return HttpResponse("limited" if was_limited else "ok")


@ratelimit(key="ip", rate="5/m", block=True)
def myview_blocked(request: HttpRequest) -> HttpResponse:
    # If the same IP makes >5 reqs/min, will raise Ratelimited
    return HttpResponse()


@csrf_exempt
@ratelimit(key="post:username", rate="5/m", method=["GET", "POST"], block=False)
def login(request: HttpRequest) -> HttpResponse:
    # If the same username is used >5 times/min, this will be True.
    return limited(request)


@csrf_exempt
@ratelimit(key="post:username", rate="5/m")
@ratelimit(key="post:tenant", rate="5/m")
def login_two_keys(request: HttpRequest) -> HttpResponse:
    # Use multiple keys by stacking decorators.
    return HttpResponse()


@csrf_exempt
@ratelimit(key="get:q", rate="5/m")
@ratelimit(key="post:q", rate="5/m")
def search(request: HttpRequest) -> HttpResponse:
    # These two decorators combine to form one rate limit: the same search
    # query can only be tried 5 times a minute, regardless of the request
    # method (GET or POST)
    return HttpResponse()


@ratelimit(key="ip", rate="4/h")
def slow(request: HttpRequest) -> HttpResponse:
    # Allow 4 reqs/hour.
    return HttpResponse()


def get_rate(g: str, r: Any) -> str | None:
    return None if r.user.is_authenticated else "100/h"


@ratelimit(key="ip", rate=get_rate)
def skipif1(request: HttpRequest) -> HttpResponse:
    # Only rate limit anonymous requests
    return HttpResponse()


@ratelimit(key="user_or_ip", rate="10/s")
@ratelimit(key="user_or_ip", rate="100/m")
def burst_limit(request: HttpRequest) -> HttpResponse:
    # Implement a separate burst limit.
    return HttpResponse()


@ratelimit(group="expensive", key="user_or_ip", rate="10/h")
def expensive_view_a(request: HttpRequest) -> HttpResponse:
    return HttpResponse("a")


@ratelimit(group="expensive", key="user_or_ip", rate="10/h")
def expensive_view_b(request: HttpRequest) -> HttpResponse:
    # Shares a counter with expensive_view_a
    return HttpResponse("b")


@ratelimit(key="header:x-cluster-client-ip")
def post(request: HttpRequest) -> HttpResponse:
    # Uses the X-Cluster-Client-IP header value.
    return HttpResponse()


@ratelimit(key=lambda g, r: r.META.get("HTTP_X_CLUSTER_CLIENT_IP", r.META["REMOTE_ADDR"]))
def myview_callable_key(request: HttpRequest) -> HttpResponse:
    # Use `X-Cluster-Client-IP` but fall back to REMOTE_ADDR.
    return HttpResponse()


class MyView(View):
    @method_decorator(ratelimit(key="ip", rate="1/m", method="GET"))
    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("get")

    def post(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("post")


@method_decorator(ratelimit(key="ip", rate="1/m", method="GET"), name="get")
class MyOtherView(View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("get")


class PlainView(View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("get")


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if isinstance(exception, Ratelimited):
        return HttpResponse("Sorry you are blocked", status=429)
    return HttpResponseForbidden("Forbidden")


URLS = [
    path("myview-annotated/", myview_annotated),
    path("myview-blocked/", myview_blocked),
    path("login/", login),
    path("login-two-keys/", login_two_keys),
    path("search/", search),
    path("slow/", slow),
    path("skipif1/", skipif1),
    path("burst/", burst_limit),
    path("expensive-a/", expensive_view_a),
    path("expensive-b/", expensive_view_b),
    path("post/", post),
    path("callable-key/", myview_callable_key),
    path("my-view/", csrf_exempt(MyView.as_view())),
    path("my-other-view/", MyOtherView.as_view()),
    path("wrapped/", ratelimit(key="ip", method="GET", rate="1/m")(PlainView.as_view())),
]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock: FakeClock) -> Limiter:
    return Limiter(clock=clock)


@pytest.fixture
def site(limiter: Limiter) -> Iterator[Client]:
    """The examples, without ratemw's middleware: only the import changed."""
    with project(limiter, *URLS, middleware=NO_MIDDLEWARE + FAKE_AUTH):
        yield Client()


def statuses(client: Client, url: str, n: int, **request: Any) -> list[int]:
    return [client.get(url, **request).status_code for _ in range(n)]


def texts(client: Client, url: str, n: int, **request: Any) -> list[str]:
    return [client.get(url, **request).content.decode() for _ in range(n)]


# -- one test per example -------------------------------------------------------------------


def test_block_false_annotates_the_request(site: Client) -> None:
    assert texts(site, "/myview-annotated/", 7) == ["ok"] * 5 + ["limited"] * 2
    # Another address has its own count.
    assert site.get("/myview-annotated/", REMOTE_ADDR="192.0.2.9").content == b"ok"


def test_block_true_raises_ratelimited_a_403_without_ratemw_middleware(site: Client) -> None:
    assert statuses(site, "/myview-blocked/", 7) == [200] * 5 + [403] * 2


def test_a_post_field_key(site: Client) -> None:
    alice = {"username": "alice"}
    replies = [site.post("/login/", alice).content.decode() for _ in range(6)]
    assert replies == ["ok"] * 5 + ["limited"]
    assert site.post("/login/", {"username": "bob"}).content == b"ok"


def test_stacked_keys_each_count(site: Client) -> None:
    # The same username across tenants: the username's limit refuses the sixth.
    sent = [site.post("/login-two-keys/", {"username": "u", "tenant": f"t{n}"}) for n in range(6)]
    assert [r.status_code for r in sent] == [200] * 5 + [403]
    # The same tenant across usernames: the tenant's limit refuses the sixth.
    sent = [site.post("/login-two-keys/", {"username": f"u{n}", "tenant": "t"}) for n in range(6)]
    assert [r.status_code for r in sent] == [200] * 5 + [403]


def test_get_and_post_keys_combine_into_one_limit(site: Client) -> None:
    replies = [site.get("/search/", {"q": "cats"}).status_code for _ in range(3)]
    replies += [site.post("/search/", {"q": "cats"}).status_code for _ in range(2)]
    assert replies == [200] * 5
    assert site.get("/search/", {"q": "cats"}).status_code == 403
    assert site.post("/search/", {"q": "cats"}).status_code == 403


def test_four_an_hour(site: Client, clock: FakeClock) -> None:
    assert statuses(site, "/slow/", 5) == [200] * 4 + [403]
    clock.advance(3599)
    assert site.get("/slow/").status_code == 403
    clock.advance(1)
    assert site.get("/slow/").status_code == 200


def test_a_rate_callable_skips_authenticated_users(site: Client) -> None:
    assert statuses(site, "/skipif1/", 101) == [200] * 100 + [403]
    assert statuses(site, "/skipif1/", 150, HTTP_X_USER="7") == [200] * 150


def test_a_separate_burst_limit(site: Client, clock: FakeClock) -> None:
    assert statuses(site, "/burst/", 11) == [200] * 10 + [403]
    replies = []
    for _ in range(9):
        clock.advance(1)
        replies += statuses(site, "/burst/", 10)
    assert replies == [200] * 90  # 100 in the minute
    clock.advance(1)
    assert site.get("/burst/").status_code == 403  # the minute's limit, not the second's
    # A logged-in user is counted by user, apart from the address.
    assert site.get("/burst/", HTTP_X_USER="7").status_code == 200


def test_a_group_shares_its_counter(site: Client) -> None:
    replies = statuses(site, "/expensive-a/", 6) + statuses(site, "/expensive-b/", 4)
    assert replies == [200] * 10
    assert site.get("/expensive-a/").status_code == 403
    assert site.get("/expensive-b/").status_code == 403


def test_a_header_key_without_a_rate_is_no_limit(site: Client) -> None:
    # As with django-ratelimit, no rate means no limit.
    assert statuses(site, "/post/", 30, HTTP_X_CLUSTER_CLIENT_IP="192.0.2.1") == [200] * 30


def test_a_callable_key_without_a_rate_is_no_limit(site: Client) -> None:
    assert statuses(site, "/callable-key/", 30) == [200] * 30


def test_class_based_views(site: Client) -> None:
    assert statuses(site, "/my-view/", 2) == [200, 403]
    assert site.post("/my-view/").status_code == 200  # only GET is limited
    assert statuses(site, "/my-other-view/", 2) == [200, 403]
    assert statuses(site, "/wrapped/", 2) == [200, 403]


def test_a_handler403_telling_ratelimited_apart(limiter: Limiter) -> None:
    with project(limiter, *URLS, middleware=NO_MIDDLEWARE) as urlconf:
        urlconf.handler403 = handler403  # type: ignore[attr-defined]
        client = Client()
        replies = [client.get("/myview-blocked/") for _ in range(6)]
    assert [r.status_code for r in replies] == [200] * 5 + [429]
    assert replies[-1].content == b"Sorry you are blocked"


# -- the core helpers ------------------------------------------------------------------------


def request_for(method: str = "POST", **data: str) -> HttpRequest:
    from django.test import RequestFactory

    factory = RequestFactory()
    return factory.post("/login/", data) if method == "POST" else factory.get("/login/", data)


def test_get_usage_and_is_ratelimited(limiter: Limiter) -> None:
    with project(limiter):
        args = {"group": "login", "key": "post:username", "rate": "3/m"}
        request = request_for(username="alice")
        assert get_usage(request, **args) == {
            "count": 0,
            "limit": 3,
            "should_limit": False,
            "time_left": 60,  # a window would start now
            "decision": get_usage(request, **args)["decision"],  # type: ignore[index]
        }
        counted = [get_usage(request_for(username="alice"), increment=True, **args)
                   for _ in range(4)]  # fmt: skip
        assert [(u["count"], u["should_limit"]) for u in counted if u] == [
            (1, False), (2, False), (3, False), (3, True)
        ]  # fmt: skip
        assert counted[0] is not None and counted[0]["time_left"] == 60
        # increment=False counts nothing: whether one more would be refused.
        assert is_ratelimited(request_for(username="alice"), **args) is True
        assert is_ratelimited(request_for(username="bob"), **args) is False
        assert get_usage(request_for(username="bob"), **args)["count"] == 0  # type: ignore[index]
        # Another method: no limit applies.
        assert get_usage(request_for("GET"), method="POST", **args) is None
        assert is_ratelimited(request_for("GET"), method=UNSAFE, **args) is False
        assert is_ratelimited(request_for(), method=ALL, **args) is False  # no username: address
        # The group may come from a view, as the decorator names it.
        assert get_usage(request_for(), fn=slow, key="ip", rate="4/h")["limit"] == 4  # type: ignore[index]


def test_get_usage_needs_a_group_or_a_view() -> None:
    with pytest.raises(ConfigurationError, match="group= or fn="):
        get_usage(request_for(), key="ip", rate="5/m")


def test_the_shortcuts_are_where_django_ratelimit_has_them() -> None:
    assert ratelimit.ALL is ALL and ratelimit.UNSAFE is UNSAFE  # type: ignore[attr-defined]
    assert is_ratelimited.ALL is ALL and get_usage.UNSAFE is UNSAFE  # type: ignore[attr-defined]
    assert UNSAFE == ["DELETE", "PATCH", "POST", "PUT"]
    assert issubclass(Ratelimited, RateLimitExceeded)
    from django.core.exceptions import PermissionDenied

    assert issubclass(Ratelimited, PermissionDenied)


# -- with ratemw's middleware: the standard 429 ---------------------------------------------


def test_with_the_middleware_a_blocked_request_is_the_standard_429(
    limiter: Limiter, clock: FakeClock
) -> None:
    with project(limiter, *URLS, middleware=RATEMW_MIDDLEWARE):
        client = Client()
        assert statuses(client, "/myview-blocked/", 5) == [200] * 5
        clock.advance(20)
        refused = client.get("/myview-blocked/")
    assert refused.status_code == 429
    assert refused["Retry-After"] == "40"
    assert refused["Content-Type"] == "application/problem+json"
    problem = refused.json()
    assert problem["retry_after"] == 40
    assert "GET /myview-blocked/" in problem["detail"]
    group = "tests.contrib.test_django_ratelimit.myview_blocked"
    assert [p["name"] for p in problem["policies"]] == [f"{group}-per-minute"]


def test_ratelimited_raised_by_hand_is_a_429_with_the_middleware(limiter: Limiter) -> None:
    def view(request: HttpRequest) -> HttpResponse:
        raise Ratelimited()

    with project(limiter, path("by-hand/", view), middleware=RATEMW_MIDDLEWARE):
        assert Client().get("/by-hand/").status_code == 429
    with project(limiter, path("by-hand/", view), middleware=NO_MIDDLEWARE):
        assert Client().get("/by-hand/").status_code == 403


def test_counts_are_the_limiters_shared_with_limits_from_code(limiter: Limiter) -> None:
    with project(limiter, *URLS, middleware=NO_MIDDLEWARE):
        client = Client()
        assert statuses(client, "/expensive-a/", 8) == [200] * 8
        # The group is a scope: the same counts as limiter.hit(..., scope="expensive").
        decision = limiter.peek("127.0.0.1", "10/hour", scope="expensive")
        assert decision.policies[0].remaining == 2


def test_the_default_limiter_when_ratemw_is_not_configured() -> None:
    from ratemw.contrib._django_ratelimit import _default_limiter

    _default_limiter().reset()
    with project(None, *URLS, middleware=NO_MIDDLEWARE):
        assert statuses(Client(), "/slow/", 5) == [200] * 4 + [403]
    _default_limiter().reset()


def test_ratelimit_enable_false_limits_nothing(limiter: Limiter) -> None:
    with project(limiter, *URLS, middleware=NO_MIDDLEWARE, RATELIMIT_ENABLE=False):
        assert statuses(Client(), "/slow/", 6) == [200] * 6


class Custom(Exception):
    pass


def test_ratelimit_exception_class(limiter: Limiter) -> None:
    def raised(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
        return HttpResponse("custom", status=418)

    with project(
        limiter,
        *URLS,
        middleware=NO_MIDDLEWARE,
        RATELIMIT_EXCEPTION_CLASS="tests.contrib.test_django_ratelimit.Custom",
    ):
        client = Client(raise_request_exception=False)
        replies = statuses(client, "/myview-blocked/", 6)
    assert replies == [200] * 5 + [500]  # Django's answer to an unknown exception


# -- async views ----------------------------------------------------------------------------


@ratelimit(key="user_or_ip", rate="2/m", block=False)
async def async_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("limited" if request.limited else "ok")  # type: ignore[attr-defined]


@ratelimit(key="ip", rate="2/m")
async def async_blocked(request: HttpRequest) -> HttpResponse:
    return HttpResponse()


def test_async_views(limiter: Limiter) -> None:
    urls = [path("async/", async_view), path("async-blocked/", async_blocked)]

    async def fetch() -> tuple[list[bytes], list[int]]:
        client = AsyncClient()
        bodies = [(await client.get("/async/")).content for _ in range(3)]
        codes = [(await client.get("/async-blocked/")).status_code for _ in range(3)]
        return bodies, codes

    with project(limiter, *urls, middleware=RATEMW_MIDDLEWARE):
        bodies, codes = asyncio.run(fetch())
    assert bodies == [b"ok", b"ok", b"limited"]
    assert codes == [200, 200, 429]


# -- what a caller or a callable can do -------------------------------------------------------


def test_a_missing_field_counts_by_address_not_in_one_shared_bucket(site: Client) -> None:
    # Leaving the username out earns no quota: the request counts by client address.
    assert [site.post("/login/", {}).content for _ in range(6)] == [b"ok"] * 5 + [b"limited"]
    # And it is not everyone's bucket: another address is not limited.
    assert site.post("/login/", {}, REMOTE_ADDR="192.0.2.9").content == b"ok"


def test_a_huge_or_odd_field_is_only_a_key(site: Client) -> None:
    for value in ("x" * 100_000, "\x00\u2028", " "):
        replies = [site.post("/login/", {"username": value}).content for _ in range(6)]
        assert replies == [b"ok"] * 5 + [b"limited"], repr(value[:10])


def test_a_malformed_body_counts_by_address(site: Client) -> None:
    body = b"--x\r\nContent-Disposition: form-data; name=\r\n\r\nbroken"
    replies = [
        site.post("/login/", body, content_type="multipart/form-data; boundary=x").content
        for _ in range(6)
    ]
    assert replies == [b"ok"] * 5 + [b"limited"]


def failing_key(group: str, request: Any) -> Any:
    raise RuntimeError("the key function is broken")


def none_key(group: str, request: Any) -> Any:
    return None


def failing_rate(group: str, request: Any) -> Any:
    raise RuntimeError("the rate function is broken")


def garbage_rate(group: str, request: Any) -> Any:
    return "lots"


@pytest.mark.parametrize("key", [failing_key, none_key])
def test_a_key_callable_that_fails_counts_by_address(
    limiter: Limiter, key: Any, caplog: pytest.LogCaptureFixture
) -> None:
    view = ratelimit(key=key, rate="2/m")(lambda request: HttpResponse())
    with (
        project(limiter, path("v/", view), middleware=NO_MIDDLEWARE),
        caplog.at_level(logging.WARNING, logger="ratemw"),
    ):
        client = Client()
        assert statuses(client, "/v/", 3) == [200, 200, 403]
        assert client.get("/v/", REMOTE_ADDR="192.0.2.9").status_code == 200
    assert len([r for r in caplog.records if "key" in r.getMessage()]) == 1  # once


@pytest.mark.parametrize("rate", [failing_rate, garbage_rate, lambda g, r: (5, -1)])
def test_a_rate_callable_that_fails_limits_the_request(
    limiter: Limiter, rate: Any, caplog: pytest.LogCaptureFixture
) -> None:
    view = ratelimit(key="ip", rate=rate)(lambda request: HttpResponse())
    with (
        project(limiter, path("v/", view), middleware=NO_MIDDLEWARE),
        caplog.at_level(logging.WARNING, logger="ratemw"),
    ):
        assert statuses(Client(), "/v/", 3) == [403] * 3
    assert len([r for r in caplog.records if "rate callable" in r.getMessage()]) == 1


@pytest.mark.parametrize("rate", ["0/s", "0/m", (0, 60), lambda g, r: "0/h"])
def test_a_rate_of_zero_refuses_every_request(limiter: Limiter, rate: Any) -> None:
    view = ratelimit(key="ip", rate=rate)(lambda request: HttpResponse())
    with project(limiter, path("v/", view), middleware=RATEMW_MIDDLEWARE):
        refused = Client().get("/v/")
    assert refused.status_code == 429
    assert "Retry-After" not in refused  # never: the rate admits nothing
    assert refused.json()["policies"][0]["quota"] == 0


@pytest.mark.parametrize(
    ("rate", "limit"),
    [
        ("5/m", 5),
        ("100/5m", 100),
        ("100/300", 100),
        ("100/300s", 100),
        ("10/hour", 10),
        ("3/d", 3),
        ((7, 90), 7),
        ("2/10S", 2),
    ],
)
def test_rates_in_every_form(limiter: Limiter, rate: Any, limit: int) -> None:
    with project(limiter):
        usage = get_usage(request_for(), group="g", key="ip", rate=rate, increment=True)
    assert usage is not None and usage["limit"] == limit


@pytest.mark.parametrize(
    "arguments",
    [
        {"key": None, "rate": "5/m"},
        {"key": "", "rate": "5/m"},
        {"key": "cookie:session", "rate": "5/m"},
        {"key": "get:", "rate": "5/m"},
        {"key": "ipaddress", "rate": "5/m"},
        {"key": 5, "rate": "5/m"},
        {"key": "ip", "rate": "5/x"},
        {"key": "ip", "rate": "five/m"},
        {"key": "ip", "rate": "5/0m"},
        {"key": "ip", "rate": (5, 0)},
        {"key": "ip", "rate": (5,)},
        {"key": "ip", "rate": 5},
        {"key": "ip", "rate": "5/m", "method": "FETCH"},
        {"key": "ip", "rate": "5/m", "method": 5},
        {"key": "ip", "rate": "5/m", "group": ""},
        {"key": "ip", "rate": "5/m", "block": "yes"},
    ],
    ids=repr,
)
def test_misconfiguration_is_refused_at_decoration(arguments: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="ratelimit"):
        ratelimit(**arguments)


def test_a_dotted_path_that_does_not_import_is_a_configuration_error(limiter: Limiter) -> None:
    view = ratelimit(key="ip", rate="nowhere.to.be.found")(lambda request: HttpResponse())
    with (
        project(limiter, path("v/", view), middleware=NO_MIDDLEWARE),
        pytest.raises(ConfigurationError, match=r"nowhere\.to\.be\.found"),
    ):
        Client().get("/v/")
