"""A strategy of your own, counted the same in memory and (with its Lua) on real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ratemw import ConfigurationError, Limiter
from ratemw.storage import Hit, Usage
from ratemw.storage.strategies import STRATEGY_IMPLEMENTATIONS, register_strategy
from tests.conftest import make_client

LEAKY_LUA = """
local function leaky_count(key)
  local v = redis.call('HMGET', key, 'c', 's')
  local c, since = tonumber(v[1]) or 0, tonumber(v[2]) or now
  return math.max(c - math.floor((now - since) / 1000), 0)
end
checks['leaky-counter'] = function(key, amount, window, cost, extra)
  local count = leaky_count(key)
  if count + cost <= amount then
    return 1, amount - count - cost, 1000 * count, 0, {count = count}
  end
  return 0, amount - count, 1000 * count, 1000, {count = count}
end
consumes['leaky-counter'] = function(key, window, cost, state, amount)
  redis.call('HSET', key, 'c', state.count + cost, 's', now)
  redis.call('PEXPIRE', key, 1000 * (state.count + cost) + 1000)
end
refunds['leaky-counter'] = function(key, amount, window, cost, extra, stamp)
  redis.call('HSET', key, 'c', math.max(leaky_count(key) - cost, 0), 's', now)
end
"""


class LeakyCounter:
    """A counter that forgives one request per second of quiet."""

    name = "leaky-counter"
    lua = LEAKY_LUA

    def check(self, state: Any, now: int, hit: Hit) -> Usage:
        count = self._count(state, now)
        if count + hit.cost <= hit.amount:
            return Usage(True, hit.amount - count - hit.cost, 1000 * count, 0, now)
        return Usage(False, hit.amount - count, 1000 * count, 1000, now)

    def consume(self, state: Any, now: int, hit: Hit) -> Any:
        return [self._count(state, now) + hit.cost, now]

    def refund(self, state: Any, now: int, hit: Hit, stamp: int) -> Any:
        return [max(self._count(state, now) - hit.cost, 0), now]

    def expires(self, state: Any, hit: Hit) -> int:
        return int(state[1] + 1000 * state[0] + 1000)

    @staticmethod
    def _count(state: Any, now: int) -> int:
        if state is None:
            return 0
        count, since = state
        return int(max(count - (now - since) // 1000, 0))


@pytest.fixture
def leaky() -> Iterator[None]:
    register_strategy(LeakyCounter())
    try:
        yield
    finally:
        del STRATEGY_IMPLEMENTATIONS["leaky-counter"]


def run_burst(storage: str) -> list[tuple[int, str | None]]:
    limiter = Limiter(storage=storage, strategy="leaky-counter", key_prefix="leaky")
    with make_client(limiter, decorate=limiter.limit("2/minute")) as client:
        answers = [
            (r.status_code, r.headers.get("retry-after"))
            for r in (client.get("/") for _ in range(3))
        ]
        client.portal.call(limiter.backends.async_.aclose)  # type: ignore[union-attr]
    return answers


def test_the_same_answers_in_memory_and_on_redis(leaky: None, redis_standalone_clean: Any) -> None:
    expected = [(200, None), (200, None), (429, "1")]
    assert run_burst("memory://") == expected
    assert run_burst(redis_standalone_clean.url) == expected


def test_a_strategy_without_lua_is_refused_on_redis(redis_standalone_clean: Any) -> None:
    class MemoryOnly(LeakyCounter):
        name = "memory-only"
        lua = None  # type: ignore[assignment]

    register_strategy(MemoryOnly())
    try:
        with pytest.raises(ConfigurationError, match="'memory-only' is not served by 'redis'"):
            Limiter(storage=redis_standalone_clean.url, strategy="memory-only")
    finally:
        del STRATEGY_IMPLEMENTATIONS["memory-only"]


def test_names_with_white_space_are_refused() -> None:
    class Spaced(LeakyCounter):
        name = "leaky counter"

    with pytest.raises(ConfigurationError, match="white space"):
        register_strategy(Spaced())
