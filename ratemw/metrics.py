"""Prometheus metrics for a ``Limiter`` (needs ``pip install 'ratemw[prometheus]'``).

Labels are few by design: the route template (``/items/{id}``, not the path) and the policy
name, never the caller's key, so a flood of distinct callers cannot blow up the series count.

=====================================  ===================================================
``ratemw_requests_total``              requests a limit applied to, by ``route`` and
                                       ``outcome`` (``allowed``, ``denied``,
                                       ``shadow_denied``: allowed, but a shadow limit
                                       would have refused it)
``ratemw_policy_denials_total``        refusals by ``route`` and the ``policy`` that refused
``ratemw_shadow_policy_denials_total`` shadow policies that would have refused, likewise
``ratemw_storage_errors_total``        storage failures
``ratemw_decision_seconds``            histogram: time to decide one request (key and limit
                                       callables, the storage round trip)
=====================================  ===================================================

Example::

    from prometheus_client import make_asgi_app
    from ratemw import Limiter
    from ratemw.metrics import PrometheusMetrics

    limiter = Limiter(default_limits="100/minute", metrics=PrometheusMetrics())
    app.mount("/metrics", make_asgi_app())
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ratemw.errors import ConfigurationError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ratemw.policy.decision import Decision

__all__ = ["DEFAULT_BUCKETS", "PrometheusMetrics"]

#: Decision latency buckets, in seconds: in-memory decisions take microseconds, Redis ones
#: a round trip (a millisecond or so on a LAN), and a storage timeout 0.25 s.
DEFAULT_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)

_INSTALL_HINT = (
    "ratemw.metrics.PrometheusMetrics needs the prometheus-client package: "
    "pip install 'ratemw[prometheus]'"
)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ImportError(_INSTALL_HINT) from None
    return prometheus_client


class PrometheusMetrics:
    """Counts a limiter's decisions in Prometheus metrics; pass it as ``Limiter(metrics=...)``.

    Create it once per process (metrics are registered once per registry) and share it
    between limiters if you have several.

    Example::

        metrics = PrometheusMetrics()
        limiter = Limiter(default_limits="100/minute", metrics=metrics)

    Args:
        registry: the ``prometheus_client.CollectorRegistry`` to register in (default: the
            global ``prometheus_client.REGISTRY`` that ``make_asgi_app()`` and
            ``start_http_server()`` expose).
        namespace: the metric name prefix.
        buckets: the histogram buckets of ``<namespace>_decision_seconds``.

    Raises:
        ImportError: prometheus-client is not installed.
        ConfigurationError: metrics of this namespace already exist in the registry.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        namespace: str = "ratemw",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        prometheus = _prometheus()
        if registry is None:
            registry = prometheus.REGISTRY
        self.registry = registry
        self.namespace = namespace
        options: dict[str, Any] = {"namespace": namespace, "registry": registry}
        try:
            self.requests = prometheus.Counter(
                "requests_total",
                "Requests a rate limit applied to, by outcome.",
                ["route", "outcome"],
                **options,
            )
            self.policy_denials = prometheus.Counter(
                "policy_denials_total",
                "Requests refused, by the policy that refused them.",
                ["route", "policy"],
                **options,
            )
            self.shadow_policy_denials = prometheus.Counter(
                "shadow_policy_denials_total",
                "Requests a shadow (not enforced) policy would have refused.",
                ["route", "policy"],
                **options,
            )
            self.storage_errors = prometheus.Counter(
                "storage_errors_total",
                "Rate-limit storage failures.",
                **options,
            )
            self.decision_seconds = prometheus.Histogram(
                "decision_seconds",
                "Time taken to decide one request, storage included.",
                buckets=tuple(buckets),
                **options,
            )
        except ValueError as exc:  # "Duplicated timeseries in CollectorRegistry"
            raise ConfigurationError(
                f"metrics named {namespace}_* are already registered ({exc}); create "
                "PrometheusMetrics once per process and share it, or pass another "
                "registry= or namespace="
            ) from None

    def __repr__(self) -> str:
        return f"PrometheusMetrics(namespace={self.namespace!r})"

    def observe(self, route: str, decision: Decision, seconds: float) -> None:
        """Count one decided request (called by the limiter)."""
        if not decision.allowed:
            outcome = "denied"
            for policy in decision.policies:
                if policy.violated:
                    self.policy_denials.labels(route, policy.name).inc()
        elif decision.shadow_violated:
            outcome = "shadow_denied"
        else:
            outcome = "allowed"
        for policy in decision.shadow_violated:
            self.shadow_policy_denials.labels(route, policy.name).inc()
        self.requests.labels(route, outcome).inc()
        self.decision_seconds.observe(seconds)

    def storage_error(self) -> None:
        """Count one storage failure (called by the limiter)."""
        self.storage_errors.inc()
