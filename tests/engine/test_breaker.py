"""The circuit breaker in front of the storage."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from starlette.testclient import TestClient

from ratemw import ConfigurationError, Limiter
from ratemw.engine.breaker import CircuitBreaker, CircuitOpen
from tests.conftest import make_client


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_and_recovers_after_backoff() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=2, backoff=1.0, max_backoff=4.0, clock=clock)
    breaker.before()
    breaker.failure(ConnectionError())
    breaker.before()  # one failure: still closed
    breaker.failure(ConnectionError())
    with pytest.raises(CircuitOpen):
        breaker.before()
    clock.now += 1.0
    breaker.before()  # a probe is let through
    breaker.success()
    assert not breaker.is_open and breaker.failures == 0


def test_failed_probes_back_off_longer_up_to_the_maximum() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, backoff=1.0, max_backoff=3.0, clock=clock)
    waits = []
    for _ in range(4):
        breaker.failure(ConnectionError())
        waits.append(breaker.open_until - clock.now)
        clock.now = breaker.open_until
    assert waits == [1.0, 2.0, 3.0, 3.0]


def test_one_log_line_per_incident(caplog: pytest.LogCaptureFixture) -> None:
    breaker = CircuitBreaker(threshold=1, clock=Clock())
    with caplog.at_level(logging.INFO, logger="ratemw"):
        for _ in range(50):
            breaker.failure(ConnectionError("down"))
        breaker.success()
        breaker.success()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    events = [r.ratemw["event"] for r in caplog.records]  # type: ignore[attr-defined]
    assert events == ["storage_failed", "storage_recovered"]
    assert "failed" in messages[0] and "answering again" in messages[1]


@pytest.mark.parametrize(
    "kwargs", [{"threshold": 0}, {"backoff": 0}, {"backoff": 5, "max_backoff": 1}]
)
def test_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Limiter(breaker=kwargs)


class CountingBrokenStorage:
    def __init__(self) -> None:
        self.calls = 0

    async def acquire(self, hits: Any) -> Any:
        self.calls += 1
        raise ConnectionError("storage is down")


def test_open_circuit_spares_requests_the_storage_wait() -> None:
    limiter = Limiter(breaker={"threshold": 3, "backoff": 60, "max_backoff": 60})
    broken = CountingBrokenStorage()
    limiter.backends.async_ = broken  # type: ignore[assignment]
    limiter.backends.memory = None
    client: TestClient = make_client(limiter, decorate=limiter.limit("1/minute"))
    assert [client.get("/").status_code for _ in range(20)] == [200] * 20  # fail open
    assert broken.calls == 3
