"""The decision core's fast lane: which plans take it, and the callers' hits it keeps.

The numbers a caller sees are checked everywhere else (the caller-view table, the storage
contract); these tests pin down what the fast lane keeps and what it must not.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import ratemw.engine.drivers as drivers
from ratemw import ConfigurationError, Limiter, Rule, keys
from ratemw.engine.decide import MAX_KEY_LENGTH, KeptBatches, Outcome, evaluate
from ratemw.engine.drivers import decide_request, run
from ratemw.engine.plans import Plan
from ratemw.keys import ScopeHolder
from ratemw.storage._base import Batch
from ratemw.testing import FakeClock
from tests.conftest import call, make_client


def request(client: str = "203.0.113.7", api_key: str | None = None) -> ScopeHolder:
    headers = [(b"x-api-key", api_key.encode())] if api_key is not None else []
    scope = {"type": "http", "method": "GET", "path": "/r", "headers": headers,
             "client": (client, 1234)}
    return ScopeHolder(scope)


def planned(limiter: Limiter, limit: str = "3/minute", **options: Any) -> Plan:
    endpoint = limiter.limit(limit, **options)(lambda: None)
    return limiter.plan(endpoint, "/r", "/r", "GET")


def decide(limiter: Limiter, plan: Plan, caller: ScopeHolder) -> Outcome:
    return run(limiter, evaluate(limiter, plan, caller, "GET", "/r"))


def test_a_repeat_caller_reuses_its_hits() -> None:
    limiter = Limiter(clock=FakeClock())
    plan = planned(limiter)
    assert plan.fast
    outcomes = [decide(limiter, plan, request()) for _ in range(4)]
    assert [o.exceeded is None for o in outcomes] == [True, True, True, False]
    assert outcomes[0].headers[1] == ("RateLimit", '"per-minute";r=2;t=60')
    kept = limiter.batches.kept
    assert len(kept) == 1
    (batch,) = kept.values()
    assert limiter.batches.get(limiter, plan, ["203.0.113.7"]) is batch
    decide(limiter, plan, request("198.51.100.1"))  # another caller: its own hits
    assert len(kept) == 2
    assert len({hit.key for kept_batch in kept.values() for hit in kept_batch}) == 2


def test_hits_of_several_keys_are_kept_together() -> None:
    # A route limit by API key and an application limit by address: one batch, two digests.
    limiter = Limiter(clock=FakeClock(), application_limits="100/minute")
    plan = planned(limiter, key=keys.header("X-API-Key"))
    assert plan.fast and len(plan.entries) == 2
    decide(limiter, plan, request(api_key="k1"))
    decide(limiter, plan, request(api_key="k2"))
    assert len(limiter.batches.kept) == 2
    for batch in limiter.batches.kept.values():
        route, app = batch
        assert route.amount == 3 and app.amount == 100
        assert route.key.split("}")[0] != app.key.split("}")[0]  # different identities
    # The same key from another address counts on the key's bucket, not a new one.
    first = decide(limiter, plan, request("198.51.100.1", api_key="k1"))
    assert first.headers[1][1].startswith('"per-minute";r=1;')


@pytest.mark.parametrize(
    "options",
    [
        {"on_near_limit": lambda request, decision: None},
        {"metrics": "prometheus"},
        {"shadow": True},
        {"headers": "draft-7"},
    ],
    ids=["near-limit-hook", "metrics", "shadow", "other-headers"],
)
def test_plans_that_report_admitted_requests_are_not_fast(options: dict[str, Any]) -> None:
    if "metrics" in options:
        CollectorRegistry = pytest.importorskip("prometheus_client").CollectorRegistry
        from ratemw.metrics import PrometheusMetrics

        options = {"metrics": PrometheusMetrics(registry=CollectorRegistry())}
    limiter = Limiter(clock=FakeClock(), **options)
    plan = planned(limiter)
    assert plan.simple and not plan.fast
    decide(limiter, plan, request())
    assert not limiter.batches.kept


def test_plans_with_per_request_parts_are_not_fast() -> None:
    limiter = Limiter(clock=FakeClock())
    for options in ({"cost": lambda request: 2}, {"exempt_when": lambda request: False}):
        plan = planned(limiter, **options)
        assert not plan.simple and not plan.fast
        assert decide(limiter, plan, request()).exceeded is None
    assert not limiter.batches.kept


def test_kept_batches_are_bounded() -> None:
    limiter = Limiter(clock=FakeClock())
    limiter.batches = KeptBatches(size=10)
    plan = planned(limiter)
    for i in range(25):
        decide(limiter, plan, request(f"198.51.100.{i}"))
        assert len(limiter.batches.kept) <= 10
    assert decide(limiter, plan, request("198.51.100.24")).headers[1][1].startswith(
        '"per-minute";r=1;'
    )


def test_huge_identities_are_not_kept() -> None:
    limiter = Limiter(clock=FakeClock(), key=keys.header("X-API-Key"))
    plan = planned(limiter)
    huge = "k" * (MAX_KEY_LENGTH + 1)
    batch = limiter.batches.get(limiter, plan, [huge])
    assert isinstance(batch, Batch) and len(batch) == 1
    assert not limiter.batches.kept
    assert [decide(limiter, plan, request(api_key=huge)).exceeded is None
            for _ in range(4)] == [True, True, True, False]


# -- the instant lane ----------------------------------------------------------------------------


async def _async_key(request: Any) -> str:
    return "k"


class AddressKey(keys.client_ip):
    """A subclass of a built-in key that answers something else than a string."""

    def __call__(self, request: Any) -> Any:
        return ipaddress.ip_address(super().__call__(request))


class AsyncAddressKey(keys.client_ip):
    async def __call__(self, request: Any) -> Any:  # type: ignore[override]
        return keys.client_ip.__call__(self, request)


@pytest.mark.parametrize(
    "key", [AddressKey(), keys.header("X-API-Key", fallback=AsyncAddressKey())],
    ids=["client-ip-subclass", "header-async-fallback"],
)
def test_keys_that_look_built_in_but_are_not_still_count(key: Any) -> None:
    # They take evaluate's path, which awaits and stringifies what a key returns.
    limiter = Limiter(clock=FakeClock())
    plan = planned(limiter, key=key)
    outcomes = [decide_request(limiter, plan, request(), "GET", "/r") for _ in range(4)]
    assert [o.exceeded is None for o in outcomes] == [True, True, True, False]


@pytest.mark.parametrize(
    ("key", "instant"),
    [
        (None, True),  # the limiter's default: keys.client_ip()
        (keys.client_ip(trusted_proxies=["10.0.0.0/8"]), True),
        (keys.header("X-API-Key"), True),
        (keys.header("X-API-Key", fallback=lambda request: "anyone"), False),
        (lambda request: "k", False),
        (_async_key, False),
        (AddressKey(), False),
        (keys.header("X-API-Key", fallback=AsyncAddressKey()), False),
    ],
    ids=["default", "client-ip", "header", "header-custom-fallback", "sync-callable", "async",
         "client-ip-subclass", "header-async-fallback"],
)
def test_only_built_in_keys_make_a_fast_plan_instant(key: Any, instant: bool) -> None:
    limiter = Limiter(clock=FakeClock())
    plan = planned(limiter, key=key)
    assert plan.fast and plan.instant is instant


def test_instant_plans_decide_without_the_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    # decide_request takes the instant lane: plain calls for an admission; a refusal goes on
    # through conclude (the same outcome evaluate gives: Retry-After, the violated policy).
    limiter = Limiter(clock=FakeClock())
    instant = planned(limiter, limit="2/minute")
    general = planned(limiter, limit="2/minute", key=lambda request: "k")
    driven: list[Plan] = []
    evaluate_ = drivers.evaluate

    def watched(limiter_: Limiter, plan: Plan, *args: Any) -> Any:
        driven.append(plan)
        return evaluate_(limiter_, plan, *args)

    monkeypatch.setattr(drivers, "evaluate", watched)
    outcomes = [drivers.decide_request(limiter, instant, request(), "GET", "/r")
                for _ in range(3)]
    assert [o.exceeded is None for o in outcomes] == [True, True, False]
    assert outcomes[1].headers == [("RateLimit-Policy", '"per-minute";q=2;w=60'),
                                   ("RateLimit", '"per-minute";r=0;t=60')]
    refused = outcomes[2].exceeded
    assert refused is not None and refused.retry_after == 60
    assert [p.name for p in refused.violated] == ["per-minute"]
    assert driven == []
    drivers.decide_request(limiter, general, request(), "GET", "/r")
    assert driven == [general]


@pytest.mark.parametrize("limit", ["3/minute", "3/minute;5/hour"])
def test_the_instant_lane_answers_as_the_general_path_does(limit: str) -> None:
    # Two limiters on one clock and one route: one decided by the lane, the other by the
    # general path (an on_near_limit hook makes its plans neither fast nor instant: its
    # headers come from a Decision, its refusals from the same code as always). Same
    # outcomes, request after request, with one limit and with two.
    clock = FakeClock()
    limiter = Limiter(clock=clock)
    lane = planned(limiter, limit=limit)
    other = Limiter(clock=clock, on_near_limit=lambda request, decision: None)
    general = planned(other, limit=limit)
    assert lane.instant and not general.fast
    for step in range(8):
        ours = decide_request(limiter, lane, request(), "GET", "/r")
        theirs = decide_request(other, general, request(), "GET", "/r")
        assert ours.headers == theirs.headers, step
        assert (ours.exceeded is None) == (theirs.exceeded is None), step
        if ours.exceeded is not None and theirs.exceeded is not None:
            assert ours.exceeded.retry_after == theirs.exceeded.retry_after
            assert ours.exceeded.detail == theirs.exceeded.detail
        clock.advance(7.3)  # off the second: resets are rounded up alike


# -- plans follow the limiter's settings ---------------------------------------------------------


def test_a_setting_changed_on_a_limiter_in_use_is_planned_again() -> None:
    # Plans and kept hits are compiled from the limiter's settings: changing one makes the
    # middleware plan again. Shadow mode switched on at run time lets an over-limit caller
    # through; a hook set at run time is called, with a real Request.
    limiter = Limiter(clock=FakeClock())
    client = make_client(limiter, decorate=limiter.limit("2/minute"))
    assert [client.get("/").status_code for _ in range(3)] == [200, 200, 429]
    assert limiter.batches.kept
    limiter.shadow = True
    assert not limiter.batches.kept
    assert client.get("/").status_code == 200  # over the limit, reported, not refused
    limiter.shadow = False
    seen: list[Any] = []
    limiter.on_breach = lambda request, exc: seen.append(request)
    assert client.get("/").status_code == 429
    assert len(seen) == 1 and isinstance(seen[0], Request)
    assert seen[0].headers["host"] == "testserver"


def late_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def serve(adapter: str, limiter: Limiter, view: Any) -> Callable[[], int]:
    """One route ("/") on ``view`` behind the adapter: a function answering a request's status."""
    if adapter == "asgi":
        client = make_client(limiter, routes=[Route("/", view)])
        return lambda: client.get("/").status_code
    from ratemw.wsgi import WSGIRateLimitMiddleware

    app = WSGIRateLimitMiddleware(late_wsgi, limiter=limiter, routes=lambda environ: (view, "/"))
    return lambda: call(app, "/").status


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_limits_declared_on_a_limiter_in_use_are_planned_again(adapter: str) -> None:
    # A route served before its limits were declared (decorated late, rules set on the
    # limiter) is planned again: the new limits apply from the next request.
    def view(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    limiter = Limiter(clock=FakeClock())
    status = serve(adapter, limiter, view)
    assert [status() for _ in range(3)] == [200] * 3  # no limit yet
    limiter.limit("2/minute")(view)
    assert [status() for _ in range(3)] == [200, 200, 429]
    limiter.exempt(view)
    assert status() == 200

    other = Limiter(clock=FakeClock())
    status = serve(adapter, other, view)
    assert [status() for _ in range(3)] == [200] * 3
    rule = Rule("/", "1/minute")
    other.rules = [rule]  # checked, and kept as a tuple
    assert other.rules == (rule,)
    assert [status() for _ in range(2)] == [200, 429]
    with pytest.raises(ConfigurationError, match="Rule"):
        other.rules = ["/ 1/minute"]


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_a_route_decorated_while_it_is_planned_is_planned_again(
    adapter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another thread declares the route's limit after the limiter has read its declarations
    # and before the plan is compiled: that plan (no limits) serves its own request, but is
    # not kept, so the next request sees the limit.
    import ratemw.limiter as limiter_module

    def view(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    limiter = Limiter(clock=FakeClock())
    status = serve(adapter, limiter, view)
    compile_plan = limiter_module.compile_plan

    def declare_then_compile(*args: Any) -> Plan:
        monkeypatch.setattr(limiter_module, "compile_plan", compile_plan)
        limiter.limit("1/minute")(view)
        return compile_plan(*args)

    monkeypatch.setattr(limiter_module, "compile_plan", declare_then_compile)
    assert [status() for _ in range(3)] == [200, 200, 429]


def test_paths_of_one_route_share_their_callers_kept_hits() -> None:
    limiter = Limiter(clock=FakeClock())
    endpoint = limiter.limit("3/minute")(lambda: None)
    other = limiter.limit("3/minute")(lambda: None)
    first = limiter.plan(endpoint, "/items/{id}", "/items/1", "GET")
    second = limiter.plan(endpoint, "/items/{id}", "/items/2", "GET")
    elsewhere = limiter.plan(other, "/other/{id}", "/other/1", "GET")
    assert first.batch_id == second.batch_id != elsewhere.batch_id
    for plan in (first, second, elsewhere):
        decide(limiter, plan, request())
    assert len(limiter.batches.kept) == 2


def test_a_setting_changed_on_a_limiter_in_use_is_planned_again_under_wsgi() -> None:
    from ratemw.wsgi import WSGIRateLimitMiddleware

    def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    limiter = Limiter(clock=FakeClock(), default_limits="2/minute")
    app = WSGIRateLimitMiddleware(hello, limiter=limiter)

    def status() -> int:
        seen: list[str] = []
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "192.0.2.1",
                   "HTTP_HOST": "example.test", "wsgi.url_scheme": "http"}
        b"".join(app(environ, lambda s, h, exc_info=None: seen.append(s)))
        return int(seen[0][:3])

    assert [status() for _ in range(3)] == [200, 200, 429]
    limiter.shadow = True
    assert status() == 200
    limiter.shadow = False
    breaches: list[Any] = []
    limiter.on_breach = lambda request, exc: breaches.append(request)
    assert status() == 429
    assert isinstance(breaches[0], Request) and breaches[0].headers["host"] == "example.test"


def test_a_plan_compiled_while_a_setting_changes_is_not_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another thread switches shadow mode on while a request is being planned: that plan
    # (compiled from the old settings) serves its own request but is not cached.
    import ratemw.limiter as limiter_module

    limiter = Limiter(clock=FakeClock())
    client = make_client(limiter, decorate=limiter.limit("1/minute"))
    compile_plan = limiter_module.compile_plan

    def compile_then_change(*args: Any) -> Plan:
        plan = compile_plan(*args)
        monkeypatch.setattr(limiter_module, "compile_plan", compile_plan)
        limiter.shadow = True
        return plan

    monkeypatch.setattr(limiter_module, "compile_plan", compile_then_change)
    assert client.get("/").status_code == 200
    assert client.get("/").status_code == 200  # over the limit, planned again: shadow


class UserKey(keys.client_ip):
    """Looks built in (a client_ip subclass), but reads a header through the Request."""

    def __call__(self, request: Any) -> Any:
        return request.headers.get("x-user", "anonymous")


def test_a_subclassed_built_in_key_gets_a_request() -> None:
    # Each user has its own quota: the key is handed a Request, not a scope holder (which
    # would make it raise and count everyone by address).
    limiter = Limiter(clock=FakeClock())
    client = make_client(limiter, decorate=limiter.limit("1/minute", key=UserKey()))
    assert [client.get("/", headers={"x-user": user}).status_code
            for user in ("ann", "bob", "ann")] == [200, 200, 429]
