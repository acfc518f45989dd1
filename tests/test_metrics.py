"""Prometheus metrics, scraped in the exposition format after driving an app."""

from __future__ import annotations

import builtins
from typing import Any

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ratemw import ConfigurationError, Limiter, keys
from ratemw.metrics import PrometheusMetrics
from ratemw.testing import FakeClock
from tests.conftest import make_client


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the registry, as a Prometheus server would read the exposition."""
    text = generate_latest(registry).decode("utf-8")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


async def item(request: Request) -> PlainTextResponse:
    return PlainTextResponse("item")


def test_allowed_and_denied_by_route_template_and_policy(registry: CollectorRegistry) -> None:
    limiter = Limiter(clock=FakeClock(), metrics=PrometheusMetrics(registry=registry))
    client = make_client(limiter, routes=[Route("/items/{id}", limiter.limit("2/minute")(item))])
    assert [client.get(f"/items/{n}").status_code for n in range(3)] == [200, 200, 429]
    samples = scrape(registry)
    route = "/items/{id}"
    assert value(samples, "ratemw_requests_total", route=route, outcome="allowed") == 2
    assert value(samples, "ratemw_requests_total", route=route, outcome="denied") == 1
    assert value(samples, "ratemw_policy_denials_total", route=route, policy="per-minute") == 1
    assert value(samples, "ratemw_decision_seconds_count") == 3
    assert value(samples, "ratemw_decision_seconds_bucket", le="+Inf") == 3
    assert 0 < value(samples, "ratemw_decision_seconds_sum") < 1
    assert value(samples, "ratemw_storage_errors_total") == 0


def test_no_per_key_labels_however_many_callers(registry: CollectorRegistry) -> None:
    limiter = Limiter(
        clock=FakeClock(),
        metrics=PrometheusMetrics(registry=registry),
        default_limits="5/minute",
        key=keys.header("X-API-Key"),
    )
    client = make_client(limiter)
    for n in range(50):
        assert client.get("/", headers={"X-API-Key": f"caller-{n}"}).status_code == 200
    series = [key for key in scrape(registry) if key[0] == "ratemw_requests_total"]
    assert series == [("ratemw_requests_total", (("outcome", "allowed"), ("route", "/")))]


def test_shadow_denials_are_allowed_but_counted(registry: CollectorRegistry) -> None:
    limiter = Limiter(clock=FakeClock(), shadow=True, metrics=PrometheusMetrics(registry=registry))
    client = make_client(limiter, decorate=limiter.limit("1/minute"))
    assert [client.get("/").status_code for _ in range(3)] == [200, 200, 200]
    samples = scrape(registry)
    assert value(samples, "ratemw_requests_total", route="/", outcome="allowed") == 1
    assert value(samples, "ratemw_requests_total", route="/", outcome="shadow_denied") == 2
    assert value(samples, "ratemw_requests_total", route="/", outcome="denied") == 0
    assert value(samples, "ratemw_shadow_policy_denials_total", route="/", policy="per-minute") == 2
    assert value(samples, "ratemw_policy_denials_total", route="/", policy="per-minute") == 0


class BrokenStorage:
    """The memory storage cannot fail; this one always does."""

    async def acquire(self, hits: Any) -> Any:
        raise ConnectionError("storage is down")


def test_storage_errors_are_counted(registry: CollectorRegistry) -> None:
    limiter = Limiter(clock=FakeClock(), metrics=PrometheusMetrics(registry=registry))
    limiter.backends.async_ = BrokenStorage()  # type: ignore[assignment]
    limiter.backends.memory = None  # the driver would otherwise call memory directly
    client = make_client(limiter, decorate=limiter.limit("1/minute"))
    assert [client.get("/").status_code for _ in range(4)] == [200] * 4  # fail open
    samples = scrape(registry)
    # Three failures open the circuit breaker; the fourth request is not made to wait on the
    # storage, but storage could not answer it either, so it counts.
    assert value(samples, "ratemw_storage_errors_total") == 4
    # Undecided requests are not counted as allowed: nothing decided them.
    assert value(samples, "ratemw_requests_total", route="/", outcome="allowed") == 0


def test_namespace_and_the_default_registry() -> None:
    from prometheus_client import REGISTRY

    metrics = PrometheusMetrics(namespace="shop_ratemw")
    try:
        assert metrics.registry is REGISTRY
        names = {key[0] for key in scrape(REGISTRY)}
        assert "shop_ratemw_storage_errors_total" in names
        with pytest.raises(ConfigurationError, match="metrics named shop_ratemw_\\* are already"):
            PrometheusMetrics(namespace="shop_ratemw")
    finally:
        for collector in (
            metrics.requests,
            metrics.policy_denials,
            metrics.storage_errors,
            metrics.shadow_policy_denials,
            metrics.decision_seconds,
        ):
            REGISTRY.unregister(collector)


def test_missing_prometheus_client_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_prometheus(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "prometheus_client":
            raise ImportError("No module named 'prometheus_client'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_prometheus)
    with pytest.raises(ImportError) as error:
        PrometheusMetrics()
    assert str(error.value) == (
        "ratemw.metrics.PrometheusMetrics needs the prometheus-client package: "
        "pip install 'ratemw[prometheus]'"
    )
