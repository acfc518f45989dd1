"""The client's decision path (``ratemw/client/_pacing.py``): options, per-origin gates,
jitter bounds and the ``max_wait`` cap, without any HTTP library."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from ratemw import ConfigurationError
from ratemw.client._pacing import (
    JITTER_CAP,
    RETURN,
    Attempt,
    Gates,
    GiveUp,
    Options,
    Retry,
    display_url,
)

DEFAULTS: dict[str, Any] = {
    "max_retries": 3, "max_wait": 60.0, "retry_methods": None, "pace": True, "jitter": 0.1,
    "clock": None, "rand": None,
}  # fmt: skip


def options(**changes: Any) -> Options:
    return Options.build(**{**DEFAULTS, **changes})


BAD_OPTIONS = [
    pytest.param({"max_retries": -1}, "max_retries=-1", id="negative max_retries"),
    pytest.param({"max_retries": 1.5}, "max_retries=1.5", id="fractional max_retries"),
    pytest.param({"max_retries": True}, "max_retries=True", id="boolean max_retries"),
    pytest.param({"max_retries": "3"}, "max_retries='3'", id="text max_retries"),
    pytest.param({"max_wait": -1}, "max_wait=-1", id="negative max_wait"),
    pytest.param({"max_wait": math.inf}, "max_wait=inf", id="infinite max_wait"),
    pytest.param({"max_wait": math.nan}, "max_wait=nan", id="NaN max_wait"),
    pytest.param({"max_wait": "60"}, "max_wait='60'", id="text max_wait"),
    pytest.param({"jitter": -0.1}, "jitter=-0.1", id="negative jitter"),
    pytest.param({"jitter": 1.5}, "jitter=1.5", id="jitter over 1"),
    pytest.param({"jitter": math.nan}, "jitter=nan", id="NaN jitter"),
    pytest.param({"retry_methods": "GET"}, "retry_methods='GET'", id="a string of methods"),
    pytest.param({"retry_methods": ["GET", "G ET"]}, "'G ET'", id="not a method"),
    pytest.param({"retry_methods": [1]}, "1 is not an HTTP method", id="not a string"),
]


@pytest.mark.parametrize(("changes", "named"), BAD_OPTIONS)
def test_bad_options_are_refused_by_name(changes: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=r"expected|is not an HTTP method") as raised:
        options(**changes)
    assert named in str(raised.value)


def test_retry_methods_are_upper_cased() -> None:
    assert options(retry_methods=["get", "Post"]).retry_methods == {"GET", "POST"}


DISPLAY = [
    pytest.param(("https", "api.example", None, "/a"), "https://api.example/a", id="default"),
    pytest.param(("https", "api.example", 443, "/a"), "https://api.example/a", id="443 left out"),
    pytest.param(("http", "api.example", 8080, "/"), "http://api.example:8080/", id="a port"),
]


@pytest.mark.parametrize(("parts", "expected"), DISPLAY)
def test_display_url(parts: tuple[str, str, int | None, str], expected: str) -> None:
    assert display_url(*parts) == expected


# -- gates ------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_gate_stays_closed_for_the_longest_wait_it_was_given() -> None:
    clock = Clock()
    gates = Gates(clock)
    origin = ("https", "a", 443)
    gates.close_for(origin, 5)
    gates.close_for(origin, 2)  # a shorter wait does not open it early
    assert gates.wait(origin) == 5
    assert gates.wait(("https", "b", 443)) == 0
    clock.now += 4
    assert gates.wait(origin) == 1
    clock.now += 2
    assert gates.wait(origin) == 0


@pytest.mark.parametrize(
    "seconds",
    [pytest.param(0, id="zero"), pytest.param(-5, id="negative"), pytest.param(math.nan, id="NaN")],
)  # fmt: skip
def test_a_gate_ignores_waits_that_are_not_positive(seconds: float) -> None:
    gates = Gates(Clock())
    gates.close_for(("https", "a", 443), seconds)
    assert gates.wait(("https", "a", 443)) == 0


def test_gates_forget_expired_origins_when_there_are_many() -> None:
    clock = Clock()
    gates = Gates(clock)
    for n in range(5000):
        gates.close_for(("https", f"host{n}", 443), 1)
        clock.now += 0.01
    assert len(gates._until) <= 1025


# -- one request ------------------------------------------------------------------------------

GATE = ("https", "api.example", 443)


def attempt(method: str = "GET", replayable: bool = True, **changes: Any) -> Attempt:
    opts = options(**{"clock": Clock(), **changes})
    return Attempt(opts, Gates(opts.clock), method=method, origin=GATE,
                   url="https://api.example/", replayable=replayable, wall=lambda: 0.0)  # fmt: skip


JITTER = [
    pytest.param(2, 0.1, 0.0, 60, 2.0, id="the least: the wait told"),
    pytest.param(2, 0.1, 1 - 1e-12, 60, 2.2, id="the most: +10% of a short wait"),
    pytest.param(30, 0.1, 1 - 1e-12, 60, 31.0, id="the most: +1 s of a long wait"),
    pytest.param(30, 0.0, 1 - 1e-12, 60, 30.0, id="jitter=0"),
    pytest.param(0, 0.1, 1 - 1e-12, 60, 0.0, id="no wait, no jitter"),
    pytest.param(59, 0.1, 1 - 1e-12, 59.5, 59.5, id="never past max_wait"),
]


@pytest.mark.parametrize(("told", "jitter", "draw", "max_wait", "expected"), JITTER)
def test_jitter_bounds(
    told: int, jitter: float, draw: float, max_wait: float, expected: float
) -> None:
    a = attempt(jitter=jitter, rand=lambda: draw, max_wait=max_wait)
    step = a.after(429, {"Retry-After": str(told)})
    assert isinstance(step, Retry)
    assert step.delay == pytest.approx(expected)


def test_jitter_spreads_retries_within_its_bounds() -> None:
    rng = random.Random(1)
    delays = []
    for _ in range(2000):
        step = attempt(rand=rng.random).after(429, {"Retry-After": "20"})
        assert isinstance(step, Retry)
        delays.append(step.delay)
    assert 20 <= min(delays) < 20.05
    assert 20.95 < max(delays) <= 20 + JITTER_CAP
    assert len(set(delays)) > 1900  # clients refused together come back apart


def test_waits_count_against_max_wait_across_retries_and_pacing() -> None:
    a = attempt(max_wait=10, jitter=0)
    clock = a.options.clock
    assert isinstance(clock, Clock)
    assert a.after(429, {"Retry-After": "4"}) == Retry(4)
    clock.now += 4
    assert a.pace() == 0  # the gate the 429 closed is the wait just made
    assert a.after(429, {"Retry-After": "4"}) == Retry(4)
    clock.now += 4
    step = a.after(429, {"Retry-After": "4"})
    assert isinstance(step, GiveUp)
    assert step.reason == "waiting 4 s would pass max_wait=10 s (2 s left)"
    assert a.waited == 8


def test_pacing_skips_a_wait_past_what_is_left_of_max_wait() -> None:
    a = attempt(max_wait=10)
    a.gates.close_for(GATE, 11)
    assert (a.pace(), a.waited) == (0, 0)
    a.gates.close_for(GATE, 10)
    assert a.pace() == 0  # the gate now says 11 s: still too long
    b = attempt(max_wait=10)
    b.gates.close_for(GATE, 10)
    assert (b.pace(), b.waited) == (10, 10)


@pytest.mark.parametrize("status", [pytest.param(code, id=str(code)) for code in (200, 404, 500)])
def test_other_statuses_are_returned(status: int) -> None:
    assert attempt().after(status, {"Retry-After": "5"}) is RETURN


def test_without_pacing_responses_are_not_even_read() -> None:
    class Unreadable:
        def items(self) -> Any:
            raise AssertionError("read")

    assert attempt(pace=False).after(200, Unreadable()) is RETURN  # type: ignore[arg-type]


def test_the_refusal_names_the_policy_the_body_names() -> None:
    problem = {"violated-policies": ["b"], "detail": "no"}
    headers = {"RateLimit": '"a";r=0;t=5, "b";r=2;t=9', "Retry-After": "9"}
    a = attempt("POST")
    step = a.after(429, headers, problem)
    assert isinstance(step, GiveUp)
    error = a.refusal(step, status=429, response=None)
    assert [v.name for v in error.violated] == ["b"]
    assert str(error) == (
        "POST https://api.example/ was refused with 429 Too Many Requests: no. "
        "Not retried: POST requests are not retried (see retry_methods)."
    )
