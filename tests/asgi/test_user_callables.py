"""Limits, keys and costs given as callables, sync and async, and keys that fail."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request
from starlette.testclient import TestClient

from ratemw import Limiter, keys
from ratemw.testing import FakeClock
from tests.asgi._helpers import statuses
from tests.conftest import make_client, parse_sf_list

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- callables ---------------------------------------------------------------------------------


def plan_limit(request: Request) -> str:
    return "3/minute" if request.headers.get("x-plan") == "pro" else "1/minute"


async def async_plan_limit(request: Request) -> str:
    await asyncio.sleep(0)
    return plan_limit(request)


@pytest.mark.parametrize("limit", [plan_limit, async_plan_limit], ids=["sync", "async"])
def test_callable_limits_give_per_plan_tiers(clock: FakeClock, limit: Any) -> None:
    limiter = Limiter(clock=clock, key=keys.header("x-user"))
    client = make_client(limiter, decorate=limiter.limit(limit, fallback="1/minute"))
    free = {"x-user": "free-user"}
    pro = {"x-user": "pro-user", "x-plan": "pro"}
    assert statuses(client, n=2, headers=free) == [200, 429]
    assert statuses(client, n=4, headers=pro) == [200, 200, 200, 429]


async def async_key(request: Request) -> str:
    await asyncio.sleep(0)
    return request.headers.get("x-user", "anon")


def sync_key(request: Request) -> str:
    return request.headers.get("x-user", "anon")


@pytest.mark.parametrize("key", [sync_key, async_key], ids=["sync", "async"])
def test_key_functions_sync_and_async(clock: FakeClock, key: Any) -> None:
    limiter = Limiter(clock=clock, key=key)
    client = make_client(limiter, decorate=limiter.limit("1/minute"))
    assert statuses(client, n=2, headers={"x-user": "alice"}) == [200, 429]
    assert statuses(client, n=1, headers={"x-user": "bob"}) == [200]


async def async_cost(request: Request) -> int:
    return int(request.headers.get("x-cost", "1"))


@pytest.mark.parametrize(
    "cost", [lambda r: int(r.headers.get("x-cost", "1")), async_cost], ids=["sync", "async"]
)
def test_cost_callables_are_reported_in_headers(clock: FakeClock, cost: Any) -> None:
    limiter = Limiter(clock=clock)
    client = make_client(limiter, decorate=limiter.limit("10/minute", cost=cost))
    response = client.get("/", headers={"x-cost": "4"})
    assert parse_sf_list(response.headers["ratelimit"]) == [("per-minute", {"r": 6, "t": 60})]
    response = client.get("/", headers={"x-cost": "7"})
    assert response.status_code == 429
    assert parse_sf_list(response.headers["ratelimit"]) == [("per-minute", {"r": 6, "t": 60})]


def test_a_raising_key_function_counts_by_address_and_never_500s(clock: FakeClock) -> None:
    def broken(request: Request) -> str:
        raise RuntimeError("token parser exploded")

    limiter = Limiter(clock=clock, key=broken)
    client = make_client(limiter, decorate=limiter.limit("1/minute"))
    assert statuses(client, n=2) == [200, 429]


def broken_key(request: Request) -> str:
    raise RuntimeError("token parser exploded")


class ExplodingClientIP(keys.client_ip):
    """A ``client_ip`` that cannot resolve anything: the last resort must hold."""

    def __call__(self, request: Any) -> str:
        raise RuntimeError("no address today")


def peers(client: TestClient, *sent: tuple[str, dict[str, str]]) -> list[int]:
    """One request per (peer address, headers), all to the same app."""
    return [
        TestClient(client.app, client=(peer, 50000)).get("/", headers=headers).status_code
        for peer, headers in sent
    ]


PROXY = "10.0.0.1"


@pytest.mark.parametrize(
    ("limiter_key", "sent", "expected"),
    [
        pytest.param(
            keys.client_ip(trusted_proxies=["10.0.0.0/8"]),
            [(PROXY, {"x-forwarded-for": "198.51.100.1"}),
             (PROXY, {"x-forwarded-for": "198.51.100.2"}),
             (PROXY, {"x-forwarded-for": "198.51.100.1"})],
            [200, 200, 429],
            id="behind a trusted proxy: each forwarded client has its bucket",
        ),
        pytest.param(
            keys.client_ip(trusted_proxies=["10.0.0.0/8"]),
            [("203.0.113.7", {"x-forwarded-for": "198.51.100.1"}),
             ("203.0.113.7", {"x-forwarded-for": "198.51.100.2"})],
            [200, 429],
            id="an untrusted peer's header is still ignored",
        ),
        pytest.param(
            keys.client_ip(ipv6_prefix=48),
            [("2001:db8:1:1::1", {}), ("2001:db8:1:2::1", {})],
            [200, 429],
            id="IPv6 grouped by the limiter's prefix",
        ),
        pytest.param(
            keys.header("x-api-key", fallback=keys.client_ip(trusted_proxies=["10.0.0.0/8"])),
            [(PROXY, {"x-forwarded-for": "198.51.100.1"}),
             (PROXY, {"x-forwarded-for": "198.51.100.2"})],
            [200, 200],
            id="the client_ip a header key falls back to",
        ),
        pytest.param(
            None,
            [("2001:db8:1:2::1", {}), ("2001:db8:1:2::2", {}), ("2001:db8:1:3::1", {})],
            [200, 429, 200],
            id="no client_ip configured: keys.client_ip(), IPv6 by /64",
        ),
        pytest.param(
            ExplodingClientIP(),
            [("203.0.113.7", {}), ("198.51.100.1", {}), ("203.0.113.7", {})],
            [200, 200, 429],
            id="the limiter's client_ip fails too: the peer address, never a 500",
        ),
    ],
)  # fmt: skip
def test_a_raising_key_function_counts_by_the_limiters_client_ip(
    clock: FakeClock,
    limiter_key: Any,
    sent: list[tuple[str, dict[str, str]]],
    expected: list[int],
) -> None:
    limiter = Limiter(clock=clock, key=limiter_key)
    client = make_client(limiter, decorate=limiter.limit("1/minute", key=broken_key))
    assert peers(client, *sent) == expected


def test_a_raising_key_function_shares_the_addresss_own_bucket(clock: FakeClock) -> None:
    """Making the key fail earns no quota beyond what leaving the session out earns."""
    by_address = keys.client_ip(trusted_proxies=["10.0.0.0/8"])

    def session_or_ip(request: Request) -> str:
        session = request.headers.get("x-session")
        if session is None:
            return by_address(request)
        return f"session:{int(session)}"  # raises on a malformed session id

    limiter = Limiter(clock=clock, key=session_or_ip)
    client = make_client(limiter, decorate=limiter.limit("2/minute"))
    anonymous: dict[str, str] = {}
    failing = {"x-session": "garbled"}
    assert [client.get("/", headers=h).status_code for h in (anonymous, failing)] == [200, 200]
    assert [client.get("/", headers=h).status_code for h in (anonymous, failing)] == [429, 429]
    assert statuses(client, headers={"x-session": "7"}) == [200]


def test_key_function_failures_are_logged_once_per_incident(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = Limiter(clock=clock, key=broken_key)
    client = make_client(limiter, decorate=limiter.limit("1000/minute"))

    def logged() -> list[Any]:
        return [
            r
            for r in caplog.records
            if getattr(r, "ratemw", {}).get("event") == "key_function_failed"
        ]

    with caplog.at_level("WARNING", logger="ratemw"):
        assert set(statuses(client, n=5)) == {200}
        clock.advance(30)
        statuses(client, n=3)
        [first] = logged()  # eight failures, one line: the first, with its traceback
        assert first.exc_info is not None
        assert first.ratemw == {  # type: ignore[attr-defined]
            "event": "key_function_failed",
            "key_function": repr(broken_key),
            "suppressed": 0,
        }
        clock.advance(31)  # the incident goes on; a minute since the first line
        statuses(client, n=2)
        [_, summary] = logged()
        assert summary.exc_info is None
        assert summary.ratemw["suppressed"] == 7  # type: ignore[attr-defined]
        assert "7 failures not logged" in summary.getMessage()
        assert "token parser exploded" in summary.getMessage()
        clock.advance(61)  # a quiet minute ends the incident: the next failure starts one
        statuses(client)
        [_, _, again] = logged()
        assert again.exc_info is not None
        assert "1 earlier failures were not logged" in again.getMessage()
        assert again.ratemw["suppressed"] == 1  # type: ignore[attr-defined]
