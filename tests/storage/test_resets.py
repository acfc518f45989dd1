"""A reset reaches every process: a caller it unblocks is admitted everywhere within 1 s.

Each Redis storage remembers refused callers, so that a flood costs Redis nothing; ``clear``
and ``reset`` (``ratemw reset``, ``Limiter.reset``) may run in another process, whose memory
is not this one's. Two storage objects stand for two worker processes here: one refuses a
caller (and remembers it), the other resets, and the first must admit the caller within a
second, having read the reset mark at most once a second, and only while it answers someone
from memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ratemw.storage import Hit
from ratemw.storage.redis import AsyncRedisStorage, RedisStorage
from tests.storage.test_storage_contract import TEST_OPTIONS, Face, key

DAY_MS = 86_400_000
WITHIN_S = 1.0
# What the test itself may add to the promise: a poll's interval and a loaded machine's
# scheduling. A worker that read the mark any less often than once a second would miss it.
SLACK_S = 0.25


def face(url: str, asynchronous: bool, **options: Any) -> Face:
    cls = AsyncRedisStorage if asynchronous else RedisStorage
    storage = cls(url, **{**TEST_OPTIONS, **options})
    return Face(storage, asyncio.new_event_loop() if asynchronous else None, cls.__name__)


@pytest.fixture
def worlds(request: pytest.FixtureRequest) -> Iterator[Any]:
    opened: list[Face] = []

    def open_(url: str, asynchronous: bool, **options: Any) -> Face:
        opened.append(face(url, asynchronous, **options))
        return opened[-1]

    yield open_
    for each in opened:
        each.close()


def gets(server: Any) -> int:
    """GET commands the server ran (the reset mark is read with one)."""
    with server.client() as admin:
        return int(admin.info("commandstats").get("cmdstat_get", {}).get("calls", 0))


@pytest.mark.parametrize(
    ("backend", "worker_async", "operation"),
    [
        pytest.param("redis_standalone_clean", False, "clear", id="sync worker, clear"),
        pytest.param("redis_standalone_clean", True, "reset", id="async worker, reset"),
        pytest.param("redis_cluster_clean", True, "clear", id="cluster, async worker, clear"),
        pytest.param("redis_cluster_clean", False, "reset", id="cluster, sync worker, reset"),
    ],
)
def test_a_reset_elsewhere_admits_the_caller_within_a_second(
    request: pytest.FixtureRequest, worlds: Any, backend: str, worker_async: bool, operation: str
) -> None:
    server = request.getfixturevalue(backend)
    worker = worlds(server.url, worker_async)
    other = worlds(server.url, not worker_async)  # the other process (and the other face)
    quota = [Hit(key(), 2, DAY_MS, 1, "fixed-window")]
    assert [worker.acquire(quota)[0].fits for _ in range(3)] == [True, True, False]
    assert len(worker.storage.blocked) == 1  # remembered: answered without Redis from now on

    if operation == "clear":
        assert other.clear(quota[0].key) is True
    else:
        other.reset()
    reset_at = time.monotonic()
    while not worker.acquire(quota)[0].fits:
        assert time.monotonic() - reset_at < WITHIN_S + SLACK_S, "still refused from memory"
        time.sleep(0.02)
    assert time.monotonic() - reset_at < WITHIN_S + SLACK_S
    assert worker.acquire(quota)[0].fits  # counting goes on in Redis, from the reset
    assert not worker.acquire(quota)[0].fits


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_the_mark_is_read_once_a_second_and_only_while_answering_from_memory(
    redis_standalone_clean: Any,
    worlds: Any,
    monkeypatch: pytest.MonkeyPatch,
    asynchronous: bool,
) -> None:
    # The storages' local clock is the test's: the budget of reads is exact.
    now = [10_000_000]
    monkeypatch.setattr("ratemw.storage.redis.blocked.monotonic_ms", lambda: now[0])
    server = redis_standalone_clean
    worker = worlds(server.url, asynchronous)
    roomy = [Hit(key(), 10**9, DAY_MS, 1, "fixed-window")]
    tight = [Hit(key(), 1, DAY_MS, 1, "fixed-window")]
    before = gets(server)
    for _ in range(300):  # 3 s of admitted requests: nobody is remembered, nothing read
        now[0] += 10
        assert worker.acquire(roomy)[0].fits
    assert gets(server) == before

    assert worker.acquire(tight)[0].fits
    assert not worker.acquire(tight)[0].fits  # remembered at t = 0
    for _ in range(300):  # 3 s of answers from memory: the mark is read once a second
        now[0] += 10
        assert not worker.acquire(tight)[0].fits
    assert gets(server) - before == 3  # at 1 s, 2 s and 3 s

    # A reset at 3 s: at most a second later the caller is admitted; not a read sooner.
    assert worlds(server.url, not asynchronous).clear(tight[0].key) is True
    reads = gets(server)
    for step in range(99):
        now[0] += 10
        assert not worker.acquire(tight)[0].fits, step  # still from memory
    assert gets(server) == reads
    now[0] += 10
    assert worker.acquire(tight)[0].fits  # 4 s: the mark is read, the refusal dropped
    assert gets(server) == reads + 1


def test_a_refusal_decided_before_a_reset_is_dropped_whenever_the_mark_is_read(
    redis_standalone_clean: Any, worlds: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The mark is the server's time of the reset, compared with the time Redis decided each
    # refusal: a reset between the refusal and the first reading of the mark counts too.
    now = [10_000_000]
    monkeypatch.setattr("ratemw.storage.redis.blocked.monotonic_ms", lambda: now[0])
    worker = worlds(redis_standalone_clean.url, False)
    tight = [Hit(key(), 1, DAY_MS, 1, "fixed-window")]
    assert [worker.acquire(tight)[0].fits for _ in range(2)] == [True, False]
    worlds(redis_standalone_clean.url, True).reset()  # before the worker ever read the mark
    now[0] += 1_000
    assert worker.acquire(tight)[0].fits
