"""What a key costs, memory and Redis: the figures docs/storage.md gives, kept honest.

``memory://`` is measured with ``tracemalloc`` over many keys (the key strings left out: the
caller makes them); Redis with ``MEMORY USAGE`` of one key. The bounds are the documented
figures give or take about a fifth.
"""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from ratemw.storage import Hit, MemoryStorage
from ratemw.storage.redis import RedisStorage
from tests.redis_servers import RedisServer

KEYS = 2_000
WINDOW_MS = 3_600_000


def _name(i: int, strategy: str) -> str:
    return f"ratemw:{{{i:032x}}}:GET /search:{strategy}:1000/60"


def _memory_per_key(strategy: str, requests: int) -> float:
    names = [_name(i, strategy) for i in range(KEYS)]
    storage = MemoryStorage(max_keys=KEYS)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for name in names:
            for _ in range(requests):
                storage.acquire([Hit(name, 10**6, WINDOW_MS, 1, strategy)])
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - before) / KEYS
    finally:
        tracemalloc.stop()


# (strategy, requests in the window, documented bytes per key)
FIGURES = [
    ("fixed-window", 1, 230),
    ("sliding-window-counter", 1, 270),
    ("gcra", 1, 300),
    ("moving-window", 1, 1_010),
    ("moving-window", 10, 1_840),
]


@pytest.mark.parametrize(("strategy", "requests", "documented"), FIGURES)
def test_memory_storage_per_key(strategy: str, requests: int, documented: int) -> None:
    measured = _memory_per_key(strategy, requests)
    assert 0.8 * documented <= measured <= 1.2 * documented, measured


# (strategy, requests in the window, documented MEMORY USAGE)
REDIS_FIGURES = [
    ("fixed-window", 1, 152),
    ("sliding-window-counter", 1, 168),
    ("gcra", 1, 152),
    ("moving-window", 1, 248),
    ("moving-window", 10, 408),
    ("moving-window", 100, 2_008),
]


@pytest.mark.parametrize(("strategy", "requests", "documented"), REDIS_FIGURES)
def test_redis_memory_usage_per_key(
    redis_standalone_clean: RedisServer, strategy: str, requests: int, documented: int
) -> None:
    storage = RedisStorage(redis_standalone_clean.url, blocked_cache_size=0)
    name = _name(7, strategy)
    try:
        for _ in range(requests):
            assert storage.acquire([Hit(name, 10**6, WINDOW_MS, 1, strategy)])[0].fits
    finally:
        storage.close()
    with redis_standalone_clean.client() as admin:
        measured = admin.memory_usage(name, samples=0)
    assert 0.8 * documented <= measured <= 1.2 * documented, measured
