"""One table of correctness tests for every storage: memory, Redis, Redis Cluster, Sentinel.

Each test runs on the sync and the async face of each backend (``store`` is parametrized),
on real time and real servers. A single Redis server is driven through both script
transports: ratemw's own connections (``redis``, ``transport="pipe"``, the default) and
redis-py's client (``redis-via-redis-py``, ``transport="redis-py"``, the reference). Windows
are 1-2 s and amounts small; nothing asserts an exact millisecond taken from real time:
durations are bounded from both sides instead, allowing for the time that passes between
calls on a loaded machine.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratemw.storage import AsyncMemoryStorage, Hit, MemoryStorage, Usage
from ratemw.storage.redis import AsyncRedisStorage, RedisStorage

WINDOW_STRATEGIES = ("fixed-window", "moving-window", "sliding-window-counter")
COUNTING_STRATEGIES = (*WINDOW_STRATEGIES, "gcra")
# Counting tests use a long window: nothing expires or slides while they run. Waiting tests
# use short ones and really wait.
WINDOW_MS = 60_000
SHORT_WINDOW_MS = 400
# Test-only: generous timeouts so that a loaded CI box never turns a slow reply into an error.
TEST_OPTIONS = {"socket_timeout": 5, "socket_connect_timeout": 5}
_ids = itertools.count()


class Face:
    """A storage driven synchronously, whichever face (sync or async) it is."""

    def __init__(self, storage: Any, loop: asyncio.AbstractEventLoop | None, name: str) -> None:
        self.storage = storage
        self.loop = loop
        self.name = name

    def _do(self, result: Any) -> Any:
        if self.loop is not None:
            return self.loop.run_until_complete(result)
        return result

    def acquire(self, hits: Sequence[Hit]) -> list[Usage]:
        return self._do(self.storage.acquire(hits))  # type: ignore[no-any-return]

    def peek(self, hits: Sequence[Hit]) -> list[Usage]:
        return self._do(self.storage.peek(hits))  # type: ignore[no-any-return]

    def clear(self, key: str) -> bool:
        return self._do(self.storage.clear(key))  # type: ignore[no-any-return]

    def exists(self, keys: Sequence[str]) -> int:
        return self._do(self.storage.exists(keys))  # type: ignore[no-any-return]

    def reset(self) -> None:
        self._do(self.storage.reset())

    def refund(self, hits: Sequence[Hit], stamp_ms: int) -> None:
        self._do(self.storage.refund(hits, stamp_ms))

    def release(self, hits: Sequence[Hit]) -> None:
        self._do(self.storage.release(hits))

    def close(self) -> None:
        if self.loop is None:
            self.storage.close()
            return
        try:
            self.loop.run_until_complete(self.storage.aclose())
        finally:
            self.loop.close()


BACKENDS = {
    "memory": None,
    "redis": "redis_standalone_clean",
    "redis-via-redis-py": "redis_standalone_clean",
    "cluster": "redis_cluster_clean",
    "sentinel": "redis_sentinel_clean",
}
# The script transport of each Redis backend (a single server has both).
TRANSPORTS = {"redis": "pipe", "redis-via-redis-py": "redis-py"}


def open_face(request: pytest.FixtureRequest, backend: str, asynchronous: bool) -> Face:
    """A fresh storage of ``backend`` (its server flushed), sync or async."""
    name = f"{backend}-{'async' if asynchronous else 'sync'}"
    if backend == "memory":
        memory = MemoryStorage()
        if asynchronous:
            return Face(AsyncMemoryStorage(memory), asyncio.new_event_loop(), name)
        return Face(memory, None, name)
    server = request.getfixturevalue(BACKENDS[backend])
    options: dict[str, Any] = {**TEST_OPTIONS}
    if backend in TRANSPORTS:
        options["transport"] = TRANSPORTS[backend]
    if asynchronous:
        loop = asyncio.new_event_loop()
        return Face(AsyncRedisStorage(server.url, **options), loop, name)
    return Face(RedisStorage(server.url, **options), None, name)


FACES = [
    pytest.param((backend, asynchronous), id=f"{backend}-{'async' if asynchronous else 'sync'}")
    for backend in BACKENDS
    for asynchronous in (False, True)
]


@pytest.fixture(params=FACES)
def store(request: pytest.FixtureRequest) -> Iterator[Face]:
    backend, asynchronous = request.param
    face = open_face(request, backend, asynchronous)
    try:
        yield face
    finally:
        face.close()


def key(label: str = "k") -> str:
    """A fresh storage key in ratemw's shape (one hash tag per caller)."""
    return f"ratemw:{{caller-{next(_ids)}}}:/route:{label}"


def hit(
    key: str,
    strategy: str,
    amount: int = 3,
    cost: int = 1,
    window_ms: int = WINDOW_MS,
    enforce: bool = True,
) -> Hit:
    return Hit(key, amount, window_ms, cost, strategy, enforce)


strategies = pytest.mark.parametrize("strategy", COUNTING_STRATEGIES)


# -- the table ---------------------------------------------------------------------------------


@strategies
def test_remaining_counts_down_then_refuses(store: Face, strategy: str) -> None:
    quota = hit(key(), strategy, amount=3)
    usages = [store.acquire([quota])[0] for _ in range(4)]
    assert [u.fits for u in usages] == [True, True, True, False]
    assert [u.remaining for u in usages] == [2, 1, 0, 0]
    refused = usages[-1]
    assert refused.wait_ms is not None
    limit = 2 * WINDOW_MS if strategy == "sliding-window-counter" else WINDOW_MS
    assert 0 < refused.wait_ms <= limit
    assert 0 < refused.reset_ms <= limit


@strategies
def test_a_refused_batch_consumes_nothing(store: Face, strategy: str) -> None:
    roomy, tight = hit(key("roomy"), strategy, amount=10), hit(key("tight"), strategy, amount=1)
    assert store.acquire([tight])[0].fits
    usages = store.acquire([roomy, tight])
    assert [u.fits for u in usages] == [True, False]
    assert usages[0].remaining == 10  # reported as it stands: nothing was taken
    assert store.peek([roomy])[0].remaining == 10
    assert store.acquire([roomy])[0].remaining == 9


@strategies
def test_a_shadow_hit_without_room_does_not_block(store: Face, strategy: str) -> None:
    real = hit(key("real"), strategy, amount=5)
    shadow = hit(key("shadow"), strategy, amount=1, enforce=False)
    assert store.acquire([shadow])[0].fits
    usages = store.acquire([real, shadow])
    assert [u.fits for u in usages] == [True, False]
    assert usages[0].remaining == 4
    assert store.peek([real])[0].remaining == 4
    assert store.peek([shadow])[0].remaining == 0  # the shadow hit took nothing more


@strategies
def test_a_cost_that_can_never_fit_has_no_wait(store: Face, strategy: str) -> None:
    quota = hit(key(), strategy, amount=3)
    too_big = hit(quota.key, strategy, amount=3, cost=4)
    usage = store.acquire([too_big])[0]
    assert not usage.fits
    assert usage.wait_ms is None
    assert store.peek([quota])[0].remaining == 3


def _sleep_until(deadline: float) -> None:
    time.sleep(max(deadline - time.monotonic(), 0))


@strategies
def test_the_wait_is_exact_then_the_same_request_fits(store: Face, strategy: str) -> None:
    """Refused until the wait has passed (it is not a guess), admitted right after it."""
    window = SHORT_WINDOW_MS
    single = hit(key(), strategy, amount=2, window_ms=window)
    double = hit(single.key, strategy, amount=2, cost=2, window_ms=window)
    assert store.acquire([single])[0].fits
    assert store.acquire([single])[0].fits
    asked = time.monotonic()
    refused = store.acquire([double])[0]
    answered = time.monotonic()
    assert not refused.fits
    assert refused.wait_ms is not None
    assert 0 < refused.wait_ms <= 2 * window
    wait = refused.wait_ms / 1000
    if wait > 0.1:
        # The server decided after `asked`; if the peek is over before `asked + wait`, the
        # server's clock cannot have reached the end of the wait either.
        _sleep_until(asked + wait - 0.08)
        early = store.peek([double])[0]
        if time.monotonic() < asked + wait - 0.002:
            assert not early.fits
    _sleep_until(answered + wait + 0.005)
    assert store.acquire([double])[0].fits


@strategies
def test_peek_consumes_nothing(store: Face, strategy: str) -> None:
    quota = hit(key(), strategy, amount=3)
    for _ in range(5):
        usage = store.peek([quota])[0]
        assert usage.fits
        assert usage.remaining == 3
    assert store.acquire([quota])[0].remaining == 2
    assert store.peek([quota])[0].remaining == 2


@strategies
def test_clear_forgets_one_key_and_reset_everything(store: Face, strategy: str) -> None:
    a, b = hit(key("a"), strategy, amount=1), hit(key("b"), strategy, amount=1)
    assert store.acquire([a])[0].fits
    assert store.acquire([b])[0].fits
    assert not store.acquire([a])[0].fits
    store.clear(a.key)
    assert store.acquire([a])[0].fits
    assert not store.acquire([b])[0].fits
    store.reset()
    assert store.acquire([a])[0].fits
    assert store.acquire([b])[0].fits


@strategies
def test_clear_and_exists_say_whether_anything_is_counted(store: Face, strategy: str) -> None:
    counted, other = hit(key("counted"), strategy), hit(key("never"), strategy)
    assert store.exists([counted.key, other.key]) == 0
    assert store.clear(counted.key) is False  # nothing matched: said so
    assert store.acquire([counted])[0].fits
    assert store.exists([counted.key, other.key]) == 1
    assert store.exists([]) == 0
    assert store.clear(counted.key) is True
    assert store.exists([counted.key]) == 0
    assert store.clear(counted.key) is False


@strategies
def test_a_refund_gives_the_units_back(store: Face, strategy: str) -> None:
    quota = hit(key(), strategy, amount=2)
    first = store.acquire([quota])[0]
    assert store.acquire([quota])[0].remaining == 0
    store.refund([quota], first.stamp_ms)
    assert store.peek([quota])[0].remaining == 1


def test_many_hits_in_one_batch(store: Face) -> None:
    hits = [hit(key(s), s, amount=4, cost=2) for s in COUNTING_STRATEGIES]
    assert [u.remaining for u in store.acquire(hits)] == [2, 2, 2, 2]
    assert [u.fits for u in store.acquire(hits)] == [True] * 4
    assert [u.fits for u in store.acquire(hits)] == [False] * 4


def test_concurrency_slots_are_taken_and_released(store: Face) -> None:
    name = key("in-flight")

    def slot(token: str) -> Hit:
        return Hit(name, 2, 30_000, 1, "concurrency", token=token)

    assert store.acquire([slot("a")])[0].remaining == 1
    assert store.acquire([slot("b")])[0].remaining == 0
    third = store.acquire([slot("c")])[0]
    assert (third.fits, third.remaining) == (False, 0)
    assert third.wait_ms is not None and third.wait_ms > 0
    store.release([slot("a")])
    assert store.acquire([slot("c")])[0].fits
    assert not store.acquire([slot("d")])[0].fits


# -- twins ---------------------------------------------------------------------------------------


def _public_methods(cls: type) -> set[str]:
    names = {n for n, v in inspect.getmembers(cls) if not n.startswith("_") and callable(v)}
    return {"close" if n == "aclose" else n for n in names}


@pytest.mark.parametrize(
    ("sync", "asynchronous"),
    [(MemoryStorage, AsyncMemoryStorage), (RedisStorage, AsyncRedisStorage)],
    ids=["memory", "redis"],
)
def test_sync_and_async_twins_have_the_same_public_methods(sync: type, asynchronous: type) -> None:
    assert _public_methods(sync) - {"close"} <= _public_methods(asynchronous)
    redis_twins = {n for n in _public_methods(asynchronous) if n != "close"}
    assert redis_twins <= _public_methods(sync)
    for name in ("acquire", "peek", "refund", "release", "check", "exists", "clear", "reset"):
        assert inspect.iscoroutinefunction(getattr(asynchronous, name)), name
        assert not inspect.iscoroutinefunction(getattr(sync, name)), name
    assert inspect.iscoroutinefunction(asynchronous.aclose)


# -- Redis and memory give the same numbers ----------------------------------------------------

REDIS_FACES = [p for p in FACES if p.values[0][0] != "memory"]  # type: ignore[index]


@pytest.mark.parametrize("face", REDIS_FACES)
@strategies
def test_redis_and_memory_give_the_same_numbers(
    request: pytest.FixtureRequest, face: tuple[str, bool], strategy: str
) -> None:
    backend, asynchronous = face
    redis_face = open_face(request, backend, asynchronous)
    memory = Face(MemoryStorage(), None, "memory")
    try:
        redis_face.peek([hit(key("warm-up"), strategy)])  # connect before timing anything
        name = key()
        longest_ms = 0.0
        for cost in [1, 2, 1, 3, 1, 1, 2, 6]:
            quota = hit(name, strategy, amount=5, cost=cost)
            started = time.monotonic()
            ours, theirs = memory.acquire([quota])[0], redis_face.acquire([quota])[0]
            step_ms = (time.monotonic() - started) * 1000
            longest_ms = max(longest_ms, step_ms)
            # Each step's two answers are up to `step_ms` apart, and so are the stamps the
            # numbers count from (a window's start, a logged hit): allow the longest step
            # twice, plus a millisecond of rounding on each side.
            slack = 2 * longest_ms + 2
            assert (ours.fits, ours.remaining) == (theirs.fits, theirs.remaining), cost
            assert abs(ours.reset_ms - theirs.reset_ms) <= slack
            if ours.wait_ms is None or theirs.wait_ms is None:
                assert ours.wait_ms == theirs.wait_ms
            else:
                assert abs(ours.wait_ms - theirs.wait_ms) <= slack
    finally:
        redis_face.close()


# -- properties, on real Redis ------------------------------------------------------------------

PROPERTY_WINDOW_MS = 200
PROPERTY_AMOUNT = 4


def admitted_within_limit(strategy: str, admitted: list[tuple[int, int]]) -> None:
    """No admitted set of requests (server stamp, cost) exceeds what the strategy allows."""
    window, amount = PROPERTY_WINDOW_MS, PROPERTY_AMOUNT
    if strategy == "moving-window":
        for t, _ in admitted:
            assert sum(c for s, c in admitted if t - window < s <= t) <= amount
    elif strategy == "fixed-window":
        end, used = None, 0
        for t, c in admitted:
            # Redis expires keys on its own millisecond clock: allow the window 1 ms either way.
            if end is None or t >= end - 1:
                end, used = t + window, 0
            used += c
            assert used <= amount
    else:
        for t, _ in admitted:
            start = t - t % window
            curr = sum(c for s, c in admitted if start <= s <= t)
            prev = sum(c for s, c in admitted if start - window <= s < start)
            assert prev * (window - (t - start)) + curr * window <= amount * window


steps = st.lists(
    st.tuples(st.integers(min_value=1, max_value=3), st.integers(min_value=0, max_value=40)),
    min_size=1,
    max_size=12,
)


@pytest.mark.parametrize("strategy", WINDOW_STRATEGIES)
def test_property_redis_never_admits_more_than_the_strategy_allows(
    redis_server: Any, strategy: str
) -> None:
    storage = RedisStorage(redis_server.url, blocked_cache_size=0, **TEST_OPTIONS)

    @settings(
        max_examples=12,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(steps)
    def run(sequence: list[tuple[int, int]]) -> None:
        name = key("prop")
        admitted: list[tuple[int, int]] = []
        for cost, pause_ms in sequence:
            quota = Hit(name, PROPERTY_AMOUNT, PROPERTY_WINDOW_MS, cost, strategy)
            usage = storage.acquire([quota])[0]
            assert 0 <= usage.remaining <= PROPERTY_AMOUNT
            if usage.fits:
                admitted.append((usage.stamp_ms, cost))
            else:
                assert usage.wait_ms is not None and usage.wait_ms > 0
            time.sleep(pause_ms / 1000)
        admitted_within_limit(strategy, admitted)

    try:
        run()
    finally:
        storage.close()
