"""The decision path: one for every plan; what a plan knows in advance shortens the way but
never changes the answer.

A static plan's hits are kept per caller, and a quiet plan's admitted headers come from its
compiled heads. The property below drives random configurations and request sequences
through a plan as compiled, and through the same plan with those shortcuts switched off
(``static=False, quiet=False``: hits built per request, every admission through a full
``Decision``), and requires identical outcomes: statuses, headers, retry times, bodies.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratemw import Limiter, keys
from ratemw.engine import Outcome, Plan
from ratemw.keys import ScopeHolder
from ratemw.testing import FakeClock


def request(client: str = "203.0.113.7", api_key: str | None = None) -> ScopeHolder:
    headers = [(b"x-api-key", api_key.encode())] if api_key is not None else []
    scope = {"type": "http", "method": "GET", "path": "/r", "headers": headers,
             "client": (client, 1234)}  # fmt: skip
    return ScopeHolder(scope)


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
)  # fmt: skip
def test_keys_that_look_built_in_but_are_not_still_count(key: Any) -> None:
    # An address object is an identity by its text; an awaitable is awaited (run to
    # completion here, under the sync driver).
    limiter = Limiter(clock=FakeClock())
    endpoint = limiter.limit("3/minute", key=key)(lambda: None)
    plan = limiter.engine.plan(endpoint, "/r", "/r", "GET")
    outcomes = [limiter.engine.decide(plan, request(), "GET", "/r") for _ in range(4)]
    assert [o.exceeded is None for o in outcomes] == [True, True, True, False]


# -- the shortcuts decide as the general path does ----------------------------------------------

CALLERS = ["203.0.113.7", "2001:db8::1"]
API_KEYS = [None, "k1", "k2"]

configurations = st.fixed_dictionaries({
    "strategy": st.sampled_from(
        ["fixed-window", "moving-window", "sliding-window-counter", "gcra"]
    ),
    "limit": st.sampled_from(["3/minute", "2 per 10 seconds", "3/minute;5/hour", "1/second"]),
    "application": st.sampled_from([None, "4/minute"]),
    "cost": st.integers(min_value=1, max_value=3),
    "by_api_key": st.booleans(),
})  # fmt: skip
steps = st.lists(
    st.tuples(
        st.sampled_from(CALLERS),
        st.sampled_from(API_KEYS),
        # Seconds before the request: mostly off the second, where rounding shows.
        st.sampled_from([0.4, 7.3, 0.001, 0, 1, 30]),
    ),
    min_size=1,
    max_size=25,
)


def limiter_of(configuration: dict[str, Any], clock: FakeClock) -> tuple[Limiter, Plan]:
    limiter = Limiter(
        clock=clock,
        strategy=configuration["strategy"],
        application_limits=configuration["application"],
    )
    key = keys.header("X-API-Key") if configuration["by_api_key"] else None
    endpoint = limiter.limit(configuration["limit"], key=key, cost=configuration["cost"])(
        lambda: None
    )
    return limiter, limiter.engine.plan(endpoint, "/r", "/r", "GET")


def seen(outcome: Outcome) -> tuple[Any, ...]:
    exceeded = outcome.exceeded
    if exceeded is None:
        return ("admitted", outcome.headers)
    return ("refused", exceeded.retry_after, exceeded.headers, exceeded.body)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(configuration=configurations, sequence=steps)
def test_what_a_plan_knows_in_advance_never_changes_the_answer(
    configuration: dict[str, Any], sequence: list[tuple[str, str | None, float]]
) -> None:
    clock = FakeClock()
    compiled_limiter, compiled = limiter_of(configuration, clock)
    general_limiter, general = limiter_of(configuration, clock)
    assert compiled.static and compiled.quiet
    general = replace(general, static=False, quiet=False)
    for caller, api_key, wait in sequence:
        clock.advance(wait)
        sent = request(caller, api_key)
        ours = compiled_limiter.engine.decide(compiled, sent, "GET", "/r")
        theirs = general_limiter.engine.decide(general, sent, "GET", "/r")
        assert seen(ours) == seen(theirs)
