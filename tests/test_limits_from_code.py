"""Limits from code: ``Limiter.hit``, ``ahit``, ``peek`` and ``apeek``, on memory and on a
real Redis, sync and async.

The same strategies, storage and all-or-nothing rule as the middleware; exact under
concurrency (tasks, threads, processes); ``peek`` never counts; hostile keys and costs follow
the failure rules; a program's own mistakes (a limit that is not one) are configuration errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from ratemw import ConfigurationError, Decision, Limiter, RateLimitExceeded, StorageError
from ratemw.testing import FakeClock
from tests.redis_servers import RedisServer, find_free_port


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "memory":
        yield "memory://"
        return
    server: RedisServer = request.getfixturevalue("redis_standalone_clean")
    yield server.url


@pytest.fixture(autouse=True)
def closing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every limiter a test makes has its sync connections closed after it."""
    made: list[Limiter] = []
    init = Limiter.__init__

    def tracked(self: Limiter, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Limiter, "__init__", tracked)
    yield
    for limiter in made:
        limiter.backends.sync.close()


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def hit(mode: str, limiter: Limiter, *args: Any, **kwargs: Any) -> Decision:
    if mode == "sync":
        return limiter.hit(*args, **kwargs)
    return asyncio.run(_async_call(limiter.ahit, *args, **kwargs))


def peek(mode: str, limiter: Limiter, *args: Any, **kwargs: Any) -> Decision:
    if mode == "sync":
        return limiter.peek(*args, **kwargs)
    return asyncio.run(_async_call(limiter.apeek, *args, **kwargs))


async def _async_call(method: Any, *args: Any, **kwargs: Any) -> Decision:
    try:
        decision: Decision = await method(*args, **kwargs)
        return decision
    finally:
        await method.__self__.backends.async_.aclose()  # this loop's connections


def remaining(decision: Decision) -> list[int]:
    return [p.remaining for p in decision.policies]


# -- what a call comes to -------------------------------------------------------------------


def test_hit_counts_then_refuses_with_the_numbers(storage: str, mode: str) -> None:
    limiter = Limiter(storage=storage)
    decisions = [hit(mode, limiter, "alice", "3/minute", scope="login") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [remaining(d) for d in decisions] == [[2], [1], [0], [0]]
    refused = decisions[-1]
    (policy,) = refused.policies
    assert (policy.name, policy.quota, policy.window, policy.violated) == (
        "login-per-minute",
        3,
        60,
        True,
    )
    assert refused.retry_after is not None and 1 <= refused.retry_after <= 60
    assert refused.retry_after == policy.reset
    assert refused.exceeded and not refused.unavailable
    # Another key has its own count; a call with another scope too.
    assert hit(mode, limiter, "bob", "3/minute", scope="login").allowed
    assert hit(mode, limiter, "alice", "3/minute", scope="signup").allowed


def test_retry_after_is_exact_on_a_controlled_clock(mode: str) -> None:
    clock = FakeClock()
    limiter = Limiter(clock=clock)
    for _ in range(2):
        assert hit(mode, limiter, "k", "2/minute").allowed
    clock.advance(10)
    refused = hit(mode, limiter, "k", "2/minute")
    assert (refused.allowed, refused.retry_after) == (False, 50)
    clock.advance(49.999)
    assert hit(mode, limiter, "k", "2/minute").retry_after == 1  # rounded up, never 0
    clock.advance(0.001)
    assert hit(mode, limiter, "k", "2/minute").allowed


def test_calls_share_counts_by_scope_or_by_limit(storage: str, mode: str) -> None:
    limiter = Limiter(storage=storage)
    # Without a scope, calls with the same limit share counts; a scope names its own.
    assert hit(mode, limiter, "k", "1/minute").allowed
    assert not hit(mode, limiter, "k", ["1/minute"]).allowed
    assert hit(mode, limiter, "k", "1/minute", scope="other").allowed


def test_a_scope_is_shared_with_the_routes_of_that_scope(storage: str) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from ratemw import RateLimitMiddleware

    limiter = Limiter(storage=storage)

    @limiter.shared_limit("3/minute", scope="search")
    async def search(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/search", search)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    with TestClient(app) as client:
        assert client.get("/search").status_code == 200
        # The route counts the client address: the same identity, the same counts.
        assert limiter.hit("testclient", "3/minute", scope="search").allowed
        assert remaining(limiter.peek("testclient", "3/minute", scope="search")) == [1]
        assert client.get("/search").status_code == 200
        assert client.get("/search").status_code == 429


# -- all or nothing -------------------------------------------------------------------------


def test_several_limits_count_all_or_nothing(storage: str, mode: str) -> None:
    limiter = Limiter(storage=storage)
    limits = "10/minute;4/hour"
    first = hit(mode, limiter, "k", limits, cost=3)
    assert (first.allowed, remaining(first)) == (True, [7, 1])
    # The hour has 1 left: refused, and the minute, which had room, is not counted.
    second = hit(mode, limiter, "k", limits, cost=3)
    assert (second.allowed, remaining(second)) == (False, [7, 1])
    assert [p.violated for p in second.policies] == [False, True]
    assert second.binding is not None and second.binding.name == "per-hour"
    third = hit(mode, limiter, "k", limits, cost=2)
    assert (third.allowed, remaining(third)) == (False, [7, 1])
    fourth = hit(mode, limiter, "k", limits)
    assert (fourth.allowed, remaining(fourth)) == (True, [6, 0])
    # A list is the same as a joined string: one decision over both.
    assert remaining(peek(mode, limiter, "k", ["10/minute", "4/hour"])) == [6, 0]


# -- peek ------------------------------------------------------------------------------------


def test_peek_never_counts(storage: str, mode: str) -> None:
    limiter = Limiter(storage=storage)
    assert hit(mode, limiter, "k", "3/minute").allowed
    for _ in range(3 if mode == "async" else 1000):
        looked = peek(mode, limiter, "k", "3/minute")
        assert (looked.allowed, remaining(looked)) == (True, [2])
    assert hit(mode, limiter, "k", "3/minute").allowed
    assert hit(mode, limiter, "k", "3/minute").allowed
    assert not peek(mode, limiter, "k", "3/minute").allowed  # what a hit would meet
    assert not hit(mode, limiter, "k", "3/minute").allowed


def test_a_million_peeks_leave_the_count_unchanged() -> None:
    limiter = Limiter()
    assert limiter.hit("k", "3/minute").allowed
    peek = limiter.peek
    looks = [peek("k", "3/minute") for _ in range(1_000_000)]
    assert {(d.allowed, d.policies[0].remaining) for d in looks} == {(True, 2)}
    assert [limiter.hit("k", "3/minute").allowed for _ in range(3)] == [True, True, False]


@pytest.mark.anyio
async def test_many_async_peeks_on_redis_leave_the_count_unchanged(
    redis_standalone_clean: RedisServer,
) -> None:
    limiter = Limiter(storage=redis_standalone_clean.url)
    assert (await limiter.ahit("k", "3/minute")).allowed
    looks = await asyncio.gather(*(limiter.apeek("k", "3/minute") for _ in range(2000)))
    assert {(d.allowed, d.policies[0].remaining) for d in looks} == {(True, 2)}
    assert [(await limiter.ahit("k", "3/minute")).allowed for _ in range(3)] == [True, True, False]
    await limiter.backends.async_.aclose()


def test_peek_of_a_cost_that_does_not_fit(mode: str) -> None:
    limiter = Limiter()
    assert hit(mode, limiter, "k", "5/minute", cost=4).allowed
    assert peek(mode, limiter, "k", "5/minute").allowed
    assert not peek(mode, limiter, "k", "5/minute", cost=2).allowed
    assert remaining(peek(mode, limiter, "k", "5/minute")) == [1]


# -- exact under concurrency ----------------------------------------------------------------


@pytest.mark.anyio
async def test_ahit_is_exact_under_100_concurrent_tasks(storage: str) -> None:
    limiter = Limiter(storage=storage)
    decisions = await asyncio.gather(
        *(limiter.ahit("k", "50/minute;70/hour", scope="jobs") for _ in range(100))
    )
    assert sum(d.allowed for d in decisions) == 50
    assert sorted(d.policies[0].remaining for d in decisions if d.allowed) == list(range(50))
    assert remaining(await limiter.apeek("k", "50/minute;70/hour", scope="jobs")) == [0, 20]
    await limiter.backends.async_.aclose()


def test_hit_is_exact_under_100_concurrent_threads(storage: str) -> None:
    limiter = Limiter(storage=storage, storage_options=_POOL if storage != "memory://" else {})
    with ThreadPoolExecutor(max_workers=16) as pool:
        decisions = list(pool.map(lambda _: limiter.hit("k", "50/minute"), range(100)))
    assert sum(d.allowed for d in decisions) == 50
    assert sorted(d.policies[0].remaining for d in decisions if d.allowed) == list(range(50))


_POOL = {"max_connections": 16}

_WORKER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from ratemw import Limiter

    url, start, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    limiter = Limiter(storage=url)
    while time.time() < start:  # all four start together
        time.sleep(0.001)
    if mode == "sync":
        allowed = [limiter.hit("k", "50/minute", scope="jobs").allowed for _ in range(25)]
    else:
        async def calls():
            found = await asyncio.gather(
                *(limiter.ahit("k", "50/minute", scope="jobs") for _ in range(25))
            )
            return [d.allowed for d in found]
        allowed = asyncio.run(calls())
    print(json.dumps(allowed))
    """
)


def test_hit_is_exact_across_4_processes(redis_standalone_clean: RedisServer, mode: str) -> None:
    # memory:// counts per process by design (docs/storage.md); shared storage is the point.
    start = time.time() + 2.0
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, redis_standalone_clean.url, str(start), mode],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    allowed = []
    for worker in workers:
        out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0
        allowed.extend(json.loads(out))
    assert (len(allowed), sum(allowed)) == (100, 50)
    limiter = Limiter(storage=redis_standalone_clean.url)
    assert remaining(limiter.peek("k", "50/minute", scope="jobs")) == [0]


# -- what callers can pass, and what the program can get wrong -------------------------------


HOSTILE_KEYS = [None, "", b"", 0.5, math.nan, object(), ["a"], {"a": 1}, True]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=repr)
def test_a_key_naming_nobody_counts_in_one_shared_bucket(
    storage: str, key: Any, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = Limiter(storage=storage)
    with caplog.at_level(logging.WARNING, logger="ratemw"):
        assert limiter.hit(key, "2/minute").allowed
        # Another key naming nobody shares the bucket: no escape by sending garbage.
        assert limiter.hit(None, "2/minute").allowed
        assert not limiter.hit(key, "2/minute").allowed
    assert limiter.hit("somebody", "2/minute").allowed  # real keys are not affected
    assert any("key" in record.getMessage() for record in caplog.records)


def test_keys_are_capped_and_hashed(redis_standalone_clean: RedisServer) -> None:
    limiter = Limiter(storage=redis_standalone_clean.url)
    huge = "x" * 10_000_000
    assert limiter.hit(huge, "1/minute").allowed
    assert not limiter.hit(huge, "1/minute").allowed
    # Identities are capped (at 1024 characters) before they are hashed: keys that differ
    # only past the cap share a count; any difference within it is another key.
    assert not limiter.hit(huge[:-1] + "y", "1/minute").allowed
    assert limiter.hit("y" + huge[1:], "1/minute").allowed
    for key in (b"bytes-key", 7, uuid.UUID(int=7)):
        assert limiter.hit(key, "1/minute").allowed
    stored = redis_standalone_clean.client().keys("*")
    assert stored and all(len(name) < 200 for name in stored)
    assert not any("xxxx" in str(name) for name in stored)


@pytest.mark.parametrize("cost", [0, -1, math.nan, math.inf, 1.5, "3", None, True, 2**70])
def test_a_cost_that_is_not_a_whole_number_counts_one(storage: str, cost: Any) -> None:
    limiter = Limiter(storage=storage)
    decisions = [limiter.hit("k", "2/minute", cost=cost) for _ in range(3)]
    if cost == 2**70:  # a whole number, capped: more than any quota holds
        assert [d.allowed for d in decisions] == [False, False, False]
        assert decisions[0].retry_after is None  # it can never fit
        return
    assert [d.allowed for d in decisions] == [True, True, False]


@pytest.mark.parametrize(
    "limit",
    ["", "five per minute", "5/0 minutes", None, 5, ["5/minute", 3], "5/concurrent"],
    ids=repr,
)
def test_a_limit_that_is_not_one_is_a_configuration_error(limit: Any) -> None:
    limiter = Limiter()
    with pytest.raises(ConfigurationError, match="limit"):
        limiter.hit("k", limit)
    with pytest.raises(ConfigurationError, match="limit"):
        limiter.peek("k", limit)


@pytest.mark.parametrize("scope", ["", 5, b"jobs"], ids=repr)
def test_a_scope_that_is_not_a_name_is_a_configuration_error(scope: Any) -> None:
    with pytest.raises(ConfigurationError, match="scope"):
        Limiter().hit("k", "5/minute", scope=scope)


def test_a_limit_a_strategy_cannot_count_is_a_configuration_error() -> None:
    limiter = Limiter(strategy="fixed-window")
    with pytest.raises(ConfigurationError, match="burst"):
        limiter.hit("k", "5/minute burst 10")
    assert Limiter(strategy="gcra").hit("k", "5/minute burst 10").allowed


def test_a_hot_call_compiles_once() -> None:
    limiter = Limiter()
    for n in range(5000):
        limiter.hit(f"k{n}", "5/minute", scope="s")
    assert len(limiter._calls.groups) == 1
    # Many distinct limits (a program building them from data) stay bounded.
    for n in range(3000):
        limiter.hit("k", f"{n + 1}/minute")
    assert len(limiter._calls.groups) <= 1024


# -- raising, and the storage failing -------------------------------------------------------


def test_raise_exceeded_raises_the_refusal(mode: str) -> None:
    limiter = Limiter()
    hit(mode, limiter, "k", "1/minute", raise_exceeded=True)
    with pytest.raises(RateLimitExceeded) as raised:
        hit(mode, limiter, "k", "1/minute", raise_exceeded=True)
    exc = raised.value
    assert exc.retry_after is not None and 1 <= exc.retry_after <= 60
    assert not exc.decision.allowed
    assert exc.rate_limit_headers["Retry-After"] == str(exc.retry_after)


def test_a_storage_that_is_down_follows_the_failure_mode(mode: str) -> None:
    down = f"redis://127.0.0.1:{find_free_port()}"
    options = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}
    allow = Limiter(storage=down, storage_options=options, failure_mode="allow")
    decision = hit(mode, allow, "k", "1/minute")
    assert decision.allowed and decision.policies == ()
    deny = Limiter(storage=down, storage_options=options, failure_mode="deny")
    refused = hit(mode, deny, "k", "1/minute")
    assert (refused.allowed, refused.unavailable) == (False, True)
    assert refused.retry_after is not None and refused.retry_after >= 1
    with pytest.raises(StorageError):
        hit(mode, deny, "k", "1/minute", raise_exceeded=True)


def test_a_disabled_limiter_admits_without_counting(mode: str) -> None:
    limiter = Limiter(enabled=False)
    assert all(hit(mode, limiter, "k", "1/minute").allowed for _ in range(3))
    limiter.reconfigure(enabled=True)
    assert hit(mode, limiter, "k", "1/minute").allowed  # nothing was counted while off
    assert not hit(mode, limiter, "k", "1/minute").allowed


def test_the_detail_names_the_request_it_was_made_for() -> None:
    from starlette.requests import Request

    limiter = Limiter()
    request = Request({"type": "http", "method": "POST", "path": "/login", "headers": []})
    limiter.hit("k", "1/minute", scope="login")
    with pytest.raises(RateLimitExceeded) as raised:
        limiter.hit("k", "1/minute", scope="login", request=request, raise_exceeded=True)
    assert "POST /login" in raised.value.detail
    with pytest.raises(RateLimitExceeded) as raised:
        limiter.hit("k", "1/minute", scope="login", raise_exceeded=True)
    assert "/login" not in raised.value.detail


def test_peek_can_raise_the_refusal_a_hit_would_meet(mode: str) -> None:
    limiter = Limiter()
    peek(mode, limiter, "k", "1/minute", raise_exceeded=True)  # room: nothing raised
    hit(mode, limiter, "k", "1/minute")
    with pytest.raises(RateLimitExceeded) as raised:
        peek(mode, limiter, "k", "1/minute", raise_exceeded=True)
    assert raised.value.retry_after is not None and raised.value.retry_after >= 1


def test_hooks_see_hits_not_peeks(mode: str) -> None:
    breaches: list[RateLimitExceeded] = []
    near: list[Any] = []
    limiter = Limiter(
        on_breach=lambda request, exc: breaches.append(exc),
        on_near_limit=lambda request, policy: near.append(policy),
        near_limit_ratio=0.5,
    )
    assert hit(mode, limiter, "k", "2/minute").allowed
    assert len(near) == 1  # half the quota taken
    for _ in range(3):
        peek(mode, limiter, "k", "2/minute")
    assert hit(mode, limiter, "k", "2/minute").allowed
    assert not peek(mode, limiter, "k", "2/minute").allowed
    assert (len(breaches), len(near)) == (0, 1)  # a look reports nothing
    assert not hit(mode, limiter, "k", "2/minute").allowed
    assert len(breaches) == 1
    assert breaches[0].policies[0].name == "per-minute"
