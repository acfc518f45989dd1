"""Plans: what is compiled once per route, what a caller's kept hits are, and that plans
follow the limiter (reconfigured, or declared on while in use)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import ratemw.engine as engine_module
from ratemw import ConfigurationError, Limiter, Rule, keys
from ratemw._bounded import Bounded
from ratemw.engine import Outcome, Plan
from ratemw.engine.hits import MAX_KEY_LENGTH
from ratemw.keys import ScopeHolder
from ratemw.storage.base import Batch
from ratemw.testing import FakeClock
from tests.conftest import call, make_client


def request(client: str = "203.0.113.7", api_key: str | None = None) -> ScopeHolder:
    headers = [(b"x-api-key", api_key.encode())] if api_key is not None else []
    scope = {"type": "http", "method": "GET", "path": "/r", "headers": headers,
             "client": (client, 1234)}  # fmt: skip
    return ScopeHolder(scope)


def planned(limiter: Limiter, limit: str = "3/minute", **options: Any) -> Plan:
    endpoint = limiter.limit(limit, **options)(lambda: None)
    return limiter.engine.plan(endpoint, "/r", "/r", "GET")


def decide(limiter: Limiter, plan: Plan, caller: ScopeHolder) -> Outcome:
    return limiter.engine.decide(plan, caller, "GET", "/r")


def kept(limiter: Limiter) -> Bounded[Any, Batch]:
    return limiter.engine.context.kept.kept


def test_a_repeat_caller_reuses_its_hits() -> None:
    limiter = Limiter(clock=FakeClock())
    plan = planned(limiter)
    assert plan.static and plan.quiet
    outcomes = [decide(limiter, plan, request()) for _ in range(4)]
    assert [o.exceeded is None for o in outcomes] == [True, True, True, False]
    assert outcomes[0].headers[1] == ("RateLimit", '"per-minute";r=2;t=60')
    assert len(kept(limiter)) == 1
    (batch,) = kept(limiter).values()
    assert limiter.engine.context.kept.get(plan, ["203.0.113.7"]) is batch
    decide(limiter, plan, request("198.51.100.1"))  # another caller: its own hits
    assert len(kept(limiter)) == 2
    assert len({hit.key for kept_batch in kept(limiter).values() for hit in kept_batch}) == 2


def test_hits_of_several_keys_are_kept_together() -> None:
    # A route limit by API key and an application limit by address: one batch, two digests.
    limiter = Limiter(clock=FakeClock(), application_limits="100/minute")
    plan = planned(limiter, key=keys.header("X-API-Key"))
    assert plan.quiet and len(plan.entries) == 2
    decide(limiter, plan, request(api_key="k1"))
    decide(limiter, plan, request(api_key="k2"))
    assert len(kept(limiter)) == 2
    for batch in kept(limiter).values():
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
def test_plans_that_report_admitted_requests_are_not_quiet(options: dict[str, Any]) -> None:
    if "metrics" in options:
        CollectorRegistry = pytest.importorskip("prometheus_client").CollectorRegistry
        from ratemw.metrics import PrometheusMetrics

        options = {"metrics": PrometheusMetrics(registry=CollectorRegistry())}
    limiter = Limiter(clock=FakeClock(), **options)
    plan = planned(limiter)
    assert plan.static and not plan.quiet
    assert decide(limiter, plan, request()).exceeded is None


def test_plans_with_per_request_parts_are_not_static() -> None:
    limiter = Limiter(clock=FakeClock())
    for options in ({"cost": lambda request: 2}, {"exempt_when": lambda request: False}):
        plan = planned(limiter, **options)
        assert not plan.static and not plan.quiet
        assert decide(limiter, plan, request()).exceeded is None
    assert not kept(limiter)


def test_kept_hits_are_bounded() -> None:
    limiter = Limiter(clock=FakeClock())
    plan = planned(limiter)
    limiter.engine.context.kept.kept = Bounded(10)
    for i in range(25):
        decide(limiter, plan, request(f"198.51.100.{i}"))
        assert len(kept(limiter)) <= 10
    assert (
        decide(limiter, plan, request("198.51.100.24"))
        .headers[1][1]
        .startswith('"per-minute";r=1;')
    )


def test_huge_identities_are_not_kept() -> None:
    limiter = Limiter(clock=FakeClock(), key=keys.header("X-API-Key"))
    plan = planned(limiter)
    huge = "k" * (MAX_KEY_LENGTH + 1)
    batch = limiter.engine.context.kept.get(plan, [huge])
    assert isinstance(batch, Batch) and len(batch) == 1
    assert not kept(limiter)
    outcomes = [decide(limiter, plan, request(api_key=huge)) for _ in range(4)]
    assert [o.exceeded is None for o in outcomes] == [True, True, True, False]


def test_paths_of_one_route_share_their_callers_kept_hits() -> None:
    limiter = Limiter(clock=FakeClock())
    endpoint = limiter.limit("3/minute")(lambda: None)
    other = limiter.limit("3/minute")(lambda: None)
    engine = limiter.engine
    first = engine.plan(endpoint, "/items/{id}", "/items/1", "GET")
    second = engine.plan(endpoint, "/items/{id}", "/items/2", "GET")
    elsewhere = engine.plan(other, "/other/{id}", "/other/1", "GET")
    assert first.batch_id == second.batch_id != elsewhere.batch_id
    for plan in (first, second, elsewhere):
        decide(limiter, plan, request())
    assert len(kept(limiter)) == 2


# -- plans follow the limiter ---------------------------------------------------------------------


def test_settings_are_changed_by_reconfigure_not_by_assignment() -> None:
    limiter = Limiter(clock=FakeClock())
    with pytest.raises(AttributeError, match="reconfigure"):
        limiter.shadow = True  # type: ignore[misc]
    with pytest.raises(ConfigurationError, match="storage"):
        limiter.reconfigure(storage="redis://localhost")
    with pytest.raises(ConfigurationError, match="nonsense"):
        limiter.reconfigure(nonsense=1)
    with pytest.raises(ConfigurationError, match="explode"):
        limiter.reconfigure(failure_mode="explode")
    assert limiter.settings.failure_mode == "allow"  # a refused change changes nothing


def test_a_setting_changed_on_a_limiter_in_use_is_planned_again() -> None:
    # Shadow mode switched on at run time lets an over-limit caller through; a hook set at
    # run time is called, with a real Request. Kept hits go with the old engine.
    limiter = Limiter(clock=FakeClock())
    client = make_client(limiter, decorate=limiter.limit("2/minute"))
    assert [client.get("/").status_code for _ in range(3)] == [200, 200, 429]
    assert kept(limiter)
    limiter.reconfigure(shadow=True)
    assert not kept(limiter)
    assert client.get("/").status_code == 200  # over the limit, reported, not refused
    limiter.reconfigure(shadow=False)
    seen: list[Any] = []
    limiter.reconfigure(on_breach=lambda request, exc: seen.append(request))
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
    # A route served before its limits were declared (decorated late, rules given to the
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
    other.reconfigure(rules=[rule])  # checked, and kept as a tuple
    assert other.settings.rules == (rule,)
    assert [status() for _ in range(2)] == [200, 429]
    with pytest.raises(ConfigurationError, match="Rule"):
        other.reconfigure(rules=["/ 1/minute"])


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_a_route_decorated_while_it_is_planned_is_planned_again(
    adapter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another thread declares the route's limit after the engine has read its declarations
    # and before the plan is compiled: that plan (no limits) serves its own request, but is
    # not kept, so the next request sees the limit.
    def view(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    limiter = Limiter(clock=FakeClock())
    status = serve(adapter, limiter, view)
    compile_plan = engine_module.compile_plan

    def declare_then_compile(*args: Any, **kwargs: Any) -> Plan:
        monkeypatch.setattr(engine_module, "compile_plan", compile_plan)
        limiter.limit("1/minute")(view)
        return compile_plan(*args, **kwargs)

    monkeypatch.setattr(engine_module, "compile_plan", declare_then_compile)
    assert [status() for _ in range(3)] == [200, 200, 429]


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_a_plan_compiled_while_a_setting_changes_is_not_kept(
    adapter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another thread switches shadow mode on while a request is being planned: that plan
    # (compiled from the old settings) serves its own request but is not kept.
    def view(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    limiter = Limiter(clock=FakeClock())
    limiter.limit("1/minute")(view)
    status = serve(adapter, limiter, view)
    compile_plan = engine_module.compile_plan

    def compile_then_change(*args: Any, **kwargs: Any) -> Plan:
        plan = compile_plan(*args, **kwargs)
        monkeypatch.setattr(engine_module, "compile_plan", compile_plan)
        limiter.reconfigure(shadow=True)
        return plan

    monkeypatch.setattr(engine_module, "compile_plan", compile_then_change)
    assert status() == 200
    assert status() == 200  # over the limit, planned again: shadow


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
            for user in ("ann", "bob", "ann")] == [200, 200, 429]  # fmt: skip
