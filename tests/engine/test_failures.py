"""User callables that fail: one rule each, never a 500, never a limit escaped.

Every callable a user gives ratemw (limit, key, cost, exempt_when, deduct_when,
request_filter, error_message, hooks) may raise, or return anything at all, for some request
- including because of what a caller sent. Each has one documented rule (see
docs/headers-and-errors.md), checked here through both adapters, with sync and async
callables:

| callable | fails (raises, or returns something invalid) |
|---|---|
| cost | the request costs 1 |
| limit | its ``fallback=``, else the limiter's ``fallback_limits`` |
| key | the request is counted by client address |
| exempt_when, request_filter | not exempt |
| deduct_when | the request counts |
| error_message | the default ``detail`` |
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any

import pytest
from starlette.requests import Request

from ratemw import ConfigurationError, Limiter, keys
from ratemw.testing import FakeClock
from tests._served import ADAPTERS, Served, decorated, served

QUOTA = 3


def make_async(fn: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapper(*args: Any) -> Any:
        await asyncio.sleep(0)
        return fn(*args)

    return wrapper


def raising(error: BaseException) -> Callable[..., Any]:
    def fn(*args: Any) -> Any:
        raise error

    return fn


def returning(value: Any) -> Callable[..., Any]:
    def fn(*args: Any) -> Any:
        return value

    return fn


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return make_async if request.param == "async" else (lambda fn: fn)


# -- cost -----------------------------------------------------------------------------------


def query_cost(request: Request) -> int:
    """The documented pattern: a caller chooses its cost in the query string."""
    return int(request.query_params.get("n", 1))


def float_cost(request: Request) -> float:
    return float(request.query_params.get("w", 1))


@pytest.mark.parametrize(
    ("cost", "query"),
    [
        pytest.param(query_cost, {"n": "-1000"}, id="negative cost"),
        pytest.param(query_cost, {"n": "-1"}, id="minus one"),
        pytest.param(query_cost, {"n": "0"}, id="zero"),
        pytest.param(query_cost, {"n": "abc"}, id="not a number"),
        pytest.param(query_cost, {"n": ""}, id="empty"),
        pytest.param(float_cost, {"w": "0.5"}, id="a fraction"),
        pytest.param(float_cost, {"w": "nan"}, id="NaN"),
        pytest.param(float_cost, {"w": "inf"}, id="infinity"),
        pytest.param(float_cost, {"w": "-inf"}, id="minus infinity"),
        pytest.param(float_cost, {"w": "1e-300"}, id="tiny"),
    ],
)  # fmt: skip
def test_a_caller_chosen_cost_never_removes_a_limit(
    adapter: str, clock: FakeClock, cost: Any, query: dict[str, str]
) -> None:
    limiter = Limiter(clock=clock)
    app = served(adapter, limiter, decorated(limiter.limit(f"{QUOTA}/minute", cost=cost)))
    # Every request of this caller counts at least 1: never a 500, never a 4th admission.
    hostile = app.statuses(6, query=query)
    assert hostile == [200] * QUOTA + [429] * 3
    assert app.statuses(1) == [429]  # the quota is used up for an honest request too


@pytest.mark.parametrize(
    ("returned", "admitted"),
    [
        pytest.param(None, QUOTA, id="None"),
        pytest.param("", QUOTA, id="empty string"),
        pytest.param("2", QUOTA, id="a string, even of digits"),
        pytest.param(True, QUOTA, id="True"),
        pytest.param(0, QUOTA, id="zero"),
        pytest.param(-5, QUOTA, id="negative"),
        pytest.param(2.5, QUOTA, id="a fraction"),
        pytest.param(math.nan, QUOTA, id="NaN"),
        pytest.param(math.inf, QUOTA, id="infinity"),
        pytest.param([2], QUOTA, id="a list"),
        pytest.param(object(), QUOTA, id="an object"),
        pytest.param(2, 1, id="two: valid"),
        pytest.param(3.0, 1, id="three as a float: valid"),
        pytest.param(10**30, 0, id="far over the quota: never fits"),
    ],
)  # fmt: skip
def test_a_cost_callable_returning_garbage_counts_one(
    adapter: str, clock: FakeClock, flavour: Any, returned: Any, admitted: int
) -> None:
    limiter = Limiter(clock=clock)
    cost = flavour(returning(returned))
    app = served(adapter, limiter, decorated(limiter.limit(f"{QUOTA}/minute", cost=cost)))
    assert app.statuses(QUOTA + 1) == [200] * admitted + [429] * (QUOTA + 1 - admitted)


@pytest.mark.parametrize(
    "error", [ValueError("bad"), KeyError("n"), ZeroDivisionError(), RecursionError()]
)
def test_a_raising_cost_counts_one(
    adapter: str, clock: FakeClock, flavour: Any, error: Exception
) -> None:
    limiter = Limiter(clock=clock)
    cost = flavour(raising(error))
    app = served(adapter, limiter, decorated(limiter.limit(f"{QUOTA}/minute", cost=cost)))
    assert app.statuses(QUOTA + 1) == [200] * QUOTA + [429]


def test_a_cost_that_never_fits_says_so_without_a_retry_after(
    adapter: str, clock: FakeClock
) -> None:
    limiter = Limiter(clock=clock)
    app = served(adapter, limiter, decorated(limiter.limit("3/minute", cost=query_cost)))
    reply = app.get(query={"n": str(10**40)})
    assert reply.status == 429
    assert "retry-after" not in reply.headers
    assert "can never be satisfied" in reply.problem()["detail"]
    assert app.statuses(3) == [200, 200, 200]  # it consumed nothing


@pytest.mark.parametrize("cost", [0, -1, True, 2.0, "2", None, 10**16])
def test_a_static_cost_must_be_a_whole_number_of_at_least_one(cost: Any) -> None:
    with pytest.raises(ConfigurationError, match="cost"):
        Limiter().limit("5/minute", cost=cost)


# -- limit callables ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "returned",
    [
        pytest.param(None, id="None"),
        pytest.param("", id="empty string"),
        pytest.param("garbage", id="garbage"),
        pytest.param(5, id="a number"),
        pytest.param("0/minute", id="a quota of zero"),
        pytest.param("5/0 minutes", id="a window of zero"),
        pytest.param("1 per 100000000 years", id="a window too long"),
        pytest.param("10/second burst 20", id="a burst the strategy cannot count"),
        pytest.param(["garbage"], id="a list of garbage"),
        pytest.param([], id="an empty list"),
        pytest.param({"5/minute"}, id="a set"),
        pytest.param(b"5/minute", id="bytes"),
    ],
)  # fmt: skip
def test_a_limit_callable_returning_garbage_falls_back(
    adapter: str, clock: FakeClock, flavour: Any, returned: Any
) -> None:
    limiter = Limiter(clock=clock)
    limit = flavour(returning(returned))
    app = served(adapter, limiter, decorated(limiter.limit(limit, fallback="2/minute")))
    replies = [app.get() for _ in range(3)]
    assert [r.status for r in replies] == [200, 200, 429]
    assert replies[0].headers["ratelimit-policy"] == '"per-minute";q=2;w=60'


def test_a_raising_limit_callable_falls_back(adapter: str, clock: FakeClock, flavour: Any) -> None:
    limiter = Limiter(clock=clock)
    limit = flavour(raising(KeyError("x-plan")))
    app = served(adapter, limiter, decorated(limiter.limit(limit, fallback="2/minute")))
    assert app.statuses(3) == [200, 200, 429]


@pytest.mark.parametrize(
    "limiter_options",
    [
        pytest.param({"fallback_limits": "2/minute"}, id="the limiter's fallback_limits"),
        pytest.param({"default_limits": "2/minute"}, id="the limiter's static defaults"),
        pytest.param(
            {"default_limits": ["2/minute", returning("50/minute")]},
            id="the static ones among the defaults",
        ),
    ],
)  # fmt: skip
def test_without_its_own_fallback_a_limit_callable_falls_back_to_the_limiters(
    adapter: str, clock: FakeClock, limiter_options: dict[str, Any]
) -> None:
    limiter = Limiter(clock=clock, **limiter_options)
    app = served(adapter, limiter, decorated(limiter.limit(returning(None))))
    assert app.statuses(3) == [200, 200, 429]


def test_a_limit_callable_with_nothing_to_fall_back_on_is_refused_at_start_up() -> None:
    limiter = Limiter()
    with pytest.raises(ConfigurationError, match="has no fallback"):
        limiter.limit(returning("5/minute"))
    with pytest.raises(ConfigurationError, match="has no fallback"):
        Limiter(default_limits=returning("5/minute"))
    with pytest.raises(ConfigurationError, match="fallback"):
        Limiter().limit(returning("5/minute"), fallback="garbage")


def test_a_valid_list_of_limits_is_a_limit(adapter: str, clock: FakeClock) -> None:
    limiter = Limiter(clock=clock)
    limit = returning(["2/minute", "10/hour"])
    app = served(adapter, limiter, decorated(limiter.limit(limit, fallback="1/minute")))
    assert app.statuses(3) == [200, 200, 429]


# -- keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "returned",
    [
        pytest.param(None, id="None"),
        pytest.param("", id="empty string"),
        pytest.param("   ", id="blank"),
        pytest.param(b"", id="empty bytes"),
        pytest.param(False, id="False"),
        pytest.param(object(), id="an object whose str differs per instance"),
        pytest.param([], id="a list"),
        pytest.param(math.nan, id="NaN"),
    ],
)  # fmt: skip
def test_a_key_naming_nobody_counts_by_address_not_in_one_shared_bucket(
    adapter: str, clock: FakeClock, flavour: Any, returned: Any
) -> None:
    limiter = Limiter(clock=clock)
    key = flavour(returning(returned))
    app = served(adapter, limiter, decorated(limiter.limit("2/minute", key=key)))
    assert app.statuses(3, client="203.0.113.7") == [200, 200, 429]
    # Another address is not refused because the first one used up "everyone's" bucket.
    assert app.statuses(3, client="198.51.100.1") == [200, 200, 429]


def test_a_key_of_fresh_objects_never_escapes(adapter: str, clock: FakeClock) -> None:
    """``str(object())`` differs per call: used as an identity, every request would escape."""
    limiter = Limiter(clock=clock, key=lambda request: object())
    app = served(adapter, limiter, decorated(limiter.limit("2/minute")))
    assert app.statuses(3) == [200, 200, 429]


@pytest.mark.parametrize(
    "returned", [pytest.param(7, id="an integer"), pytest.param(b"k", id="bytes")]
)
def test_integer_and_bytes_keys_are_identities(
    adapter: str, clock: FakeClock, returned: Any
) -> None:
    limiter = Limiter(clock=clock, key=returning(returned))
    app = served(adapter, limiter, decorated(limiter.limit("2/minute")))
    assert app.statuses(2, client="203.0.113.7") == [200, 200]
    assert app.statuses(1, client="198.51.100.1") == [429]  # one identity, both addresses


# -- exempt_when, request_filter, deduct_when ---------------------------------------------


@pytest.mark.parametrize(
    ("exempt", "exempted"),
    [
        pytest.param(returning(True), True, id="True: exempt"),
        pytest.param(returning(False), False, id="False"),
        pytest.param(raising(RuntimeError("db down")), False, id="raises: not exempt"),
        pytest.param(returning("yes"), False, id="a string: not exempt"),
        pytest.param(returning(1), False, id="one: not exempt"),
        pytest.param(returning(None), False, id="None: not exempt"),
    ],
)  # fmt: skip
def test_exempt_when_exempts_only_on_true(
    adapter: str, clock: FakeClock, flavour: Any, exempt: Any, exempted: bool
) -> None:
    limiter = Limiter(clock=clock)
    app = served(
        adapter, limiter, decorated(limiter.limit("1/minute", exempt_when=flavour(exempt)))
    )
    assert app.statuses(2) == ([200, 200] if exempted else [200, 429])


@pytest.mark.parametrize(
    ("verdict", "filtered"),
    [
        pytest.param(returning(True), True, id="True: not limited"),
        pytest.param(returning(False), False, id="False"),
        pytest.param(raising(RuntimeError()), False, id="raises: limited"),
        pytest.param(returning("internal"), False, id="a string: limited"),
    ],
)  # fmt: skip
def test_request_filters_skip_every_limit_only_on_true(
    adapter: str, clock: FakeClock, flavour: Any, verdict: Any, filtered: bool
) -> None:
    limiter = Limiter(clock=clock, application_limits="1/minute")
    limiter.request_filter(flavour(verdict))
    app = served(adapter, limiter, decorated(limiter.limit("1/minute")))
    assert app.statuses(2) == ([200, 200] if filtered else [200, 429])


@pytest.mark.parametrize(
    ("deduct", "refunded"),
    [
        pytest.param(returning(False), True, id="False: refunded"),
        pytest.param(returning(True), False, id="True"),
        pytest.param(raising(RuntimeError()), False, id="raises: counts"),
        pytest.param(returning(None), False, id="None: counts"),
        pytest.param(returning(0), False, id="zero: counts"),
    ],
)  # fmt: skip
def test_deduct_when_refunds_only_on_false(
    adapter: str, clock: FakeClock, flavour: Any, deduct: Any, refunded: bool
) -> None:
    limiter = Limiter(clock=clock)
    app = served(
        adapter, limiter, decorated(limiter.limit("1/minute", deduct_when=flavour(deduct)))
    )
    assert app.statuses(2) == ([200, 200] if refunded else [200, 429])


# -- error messages (slowapi's error_message) ---------------------------------------------


@pytest.mark.parametrize(
    ("message", "detail"),
    [
        pytest.param("Slow down, please.", "Slow down, please.", id="a string"),
        pytest.param(returning("Computed."), "Computed.", id="a callable"),
        pytest.param(raising(RuntimeError()), None, id="raises: the default"),
        pytest.param(returning(42), None, id="not a string: the default"),
    ],
)  # fmt: skip
def test_error_message_is_the_refusals_detail(
    adapter: str, clock: FakeClock, message: Any, detail: str | None
) -> None:
    limiter = Limiter(clock=clock)
    app = served(adapter, limiter, decorated(limiter.limit("1/minute", error_message=message)))
    app.get()
    refused = app.get()
    assert refused.status == 429
    expected = detail or "Rate limit exceeded: 1 request per 1 minute on GET /."
    assert refused.problem()["detail"].startswith(expected)
    assert refused.headers["retry-after"] == "60"  # the numbers are untouched


# -- other limiters' calling conventions ----------------------------------------------------


def test_callables_of_nothing_are_called_with_nothing(adapter: str, clock: FakeClock) -> None:
    """flask-limiter's callables take no argument; they work unchanged."""
    limiter = Limiter(clock=clock, key=lambda: "everyone")
    decorator = limiter.limit(
        lambda: "4/minute",
        fallback="1/minute",
        cost=lambda: 2,
        exempt_when=lambda: False,
        deduct_when=lambda: True,
        error_message=lambda: "Too many.",
    )
    app = served(adapter, limiter, decorated(decorator))
    assert app.statuses(3) == [200, 200, 429]
    assert app.get().problem()["detail"] == "Too many."


def test_a_limit_provider_taking_key_gets_the_callers_identity(
    adapter: str, clock: FakeClock
) -> None:
    """slowapi's limit providers may take the caller's key."""
    limiter = Limiter(clock=clock, key=keys.header("x-user"))

    def by_user(key: str) -> str:
        return "3/minute" if key == "h:vip" else "1/minute"

    app = served(adapter, limiter, decorated(limiter.limit(by_user, fallback="1/minute")))
    assert app.statuses(2, headers={"x-user": "nobody"}) == [200, 429]
    assert app.statuses(4, headers={"x-user": "vip"}) == [200, 200, 200, 429]


# -- logging --------------------------------------------------------------------------------


def test_failures_are_logged_once_per_incident(
    adapter: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller who can make a callable fail cannot write a line to the log per request."""
    limiter = Limiter(clock=clock)
    cost = raising(ValueError("invalid literal for int()"))
    exempt = returning("maybe")
    decorator = limiter.limit("1000/minute", cost=cost, exempt_when=exempt)
    app: Served = served(adapter, limiter, decorated(decorator))
    with caplog.at_level(logging.WARNING, logger="ratemw"):
        app.statuses(20)
    events = [getattr(r, "ratemw", {}).get("event") for r in caplog.records]
    assert events.count("cost_failed") == 1
    assert events.count("exempt_when_failed") == 1
    [line] = [r for r in caplog.records if getattr(r, "ratemw", {})["event"] == "cost_failed"]
    assert line.exc_info is not None
    assert "the request costs 1" in line.getMessage()
