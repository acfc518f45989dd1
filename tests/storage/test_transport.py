"""The transport seam: how a Redis storage's scripts reach Redis, chosen once per storage.

``transport="pipe"`` (ratemw's own connections) is the default on a single server;
``transport="redis-py"`` (redis-py's client, the reference) serves every deployment and is
the only one that serves Cluster and Sentinel. The storage contract runs against both
(``test_storage_contract.py``); this module checks the choice itself, on real servers.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

from ratemw import ConfigurationError, Limiter, StorageError
from ratemw.storage import Hit
from ratemw.storage.redis import AsyncRedisStorage, RedisStorage, parse
from ratemw.storage.redis.apipe import AsyncPipe
from ratemw.storage.redis.cluster import AsyncClusterScripts, ClusterScripts
from ratemw.storage.redis.pipe import Pipe
from ratemw.storage.redis.redispy import AsyncRedisPyScripts, RedisPyScripts
from tests._tcp_proxy import TCPProxy
from tests.redis_servers import RedisServer
from tests.storage.test_storage_contract import TEST_OPTIONS, key

WINDOW_MS = 60_000


@pytest.mark.parametrize(
    ("uri", "options", "chosen"),
    [
        pytest.param("redis://h", {}, "pipe", id="single server: pipe"),
        pytest.param("rediss://h", {}, "pipe", id="TLS: pipe"),
        pytest.param("redis+unix:///run/r.sock", {}, "pipe", id="unix socket: pipe"),
        pytest.param("redis://h", {"transport": "redis-py"}, "redis-py", id="asked: redis-py"),
        pytest.param("redis://h?transport=redis-py", {}, "redis-py", id="in the query string"),
        pytest.param("redis+cluster://h:1", {}, "redis-py", id="cluster: redis-py"),
        pytest.param("redis+sentinel://h/m", {}, "redis-py", id="sentinel: redis-py"),
    ],
)
def test_the_transport_is_settled_by_the_configuration(
    uri: str, options: dict[str, Any], chosen: str
) -> None:
    assert parse(uri, options).transport == chosen


@pytest.mark.parametrize(
    ("uri", "options", "named"),
    [
        pytest.param(
            "redis+cluster://h:1",
            {"transport": "pipe"},
            "'pipe' serves a single",
            id="pipe on a cluster",
        ),
        pytest.param(
            "redis+sentinel://h/m?transport=pipe",
            {},
            "'pipe' serves a single",
            id="pipe on sentinel",
        ),
        pytest.param(
            "redis://h", {"transport": "hiredis"}, "transport='hiredis'", id="unknown transport"
        ),
    ],
)
def test_a_transport_that_cannot_serve_is_refused_at_start_up(
    uri: str, options: dict[str, Any], named: str
) -> None:
    for factory in (RedisStorage, AsyncRedisStorage):
        with pytest.raises(ConfigurationError, match=named):
            factory(uri, **options)
    with pytest.raises(ConfigurationError, match=named):
        Limiter(storage=uri, storage_options=options)


@pytest.mark.parametrize(
    ("uri", "options", "sync", "asynchronous"),
    [
        pytest.param("redis://h", {}, Pipe, AsyncPipe, id="pipe"),
        pytest.param(
            "redis://h",
            {"transport": "redis-py"},
            RedisPyScripts,
            AsyncRedisPyScripts,
            id="redis-py",
        ),
        pytest.param(
            "redis+sentinel://h/m", {}, RedisPyScripts, AsyncRedisPyScripts, id="sentinel"
        ),
        pytest.param("redis+cluster://h:1", {}, ClusterScripts, AsyncClusterScripts, id="cluster"),
    ],
)
def test_each_storage_holds_the_one_transport_chosen(
    uri: str, options: dict[str, Any], sync: type, asynchronous: type
) -> None:
    # Building a storage connects to nothing: these hosts need not exist.
    assert type(RedisStorage(uri, **options).transport) is sync
    assert type(AsyncRedisStorage(uri, **options).transport) is asynchronous


def _hellos(admin: Any) -> int:
    """How many connections said HELLO: redis-py's do, ratemw's own do not."""
    return int(admin.info("commandstats").get("cmdstat_hello", {}).get("calls", 0))


def _acquire_twice(asynchronous: bool, uri: str, **options: Any) -> list[int]:
    hits = [Hit(key(), 10, WINDOW_MS, 1, "fixed-window")]
    if not asynchronous:
        storage = RedisStorage(uri, **{**TEST_OPTIONS, **options})
        try:
            return [storage.acquire(hits)[0].remaining for _ in range(2)]
        finally:
            storage.close()

    async def main() -> list[int]:
        aio = AsyncRedisStorage(uri, **{**TEST_OPTIONS, **options})
        try:
            return [(await aio.acquire(hits))[0].remaining for _ in range(2)]
        finally:
            await aio.aclose()

    return asyncio.run(main())


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(("transport", "hello"), [("pipe", False), ("redis-py", True)])
def test_the_scripts_go_through_the_transport_asked_for(
    redis_standalone_clean: RedisServer, asynchronous: bool, transport: str, hello: bool
) -> None:
    with redis_standalone_clean.client() as admin:
        before = _hellos(admin)
        assert _acquire_twice(asynchronous, redis_standalone_clean.url, transport=transport) == [
            9,
            8,
        ]
        assert (_hellos(admin) > before) is hello


def test_redis_py_costs_one_round_trip_per_acquire_too(redis_standalone_clean: RedisServer) -> None:
    storage = RedisStorage(redis_standalone_clean.url, transport="redis-py", **TEST_OPTIONS)
    try:
        hits = [Hit(key(f"r{i}"), 1_000, WINDOW_MS, 1, "fixed-window") for i in range(3)]
        storage.peek(hits)  # connect and load the script first
        before = redis_standalone_clean.reads_processed()
        for _ in range(20):
            assert all(u.fits for u in storage.acquire(hits))
        assert redis_standalone_clean.reads_processed() - before == 20
    finally:
        storage.close()


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_redis_py_never_hands_garbage_to_a_call_and_recovers(
    redis_standalone_clean: RedisServer, asynchronous: bool
) -> None:
    # Bytes the server never sent, arriving while idle: redis-py reads them as the next
    # call's reply. That call fails (an outage, not the call's fault) without taking them
    # for numbers; its connection is dropped, and the next call counts on a new one.
    with TCPProxy(redis_standalone_clean.address) as proxy:
        cls = AsyncRedisStorage if asynchronous else RedisStorage
        storage: Any = cls(proxy.url, transport="redis-py", blocked_cache_size=0, **TEST_OPTIONS)
        loop = asyncio.new_event_loop()

        def do(result: Any) -> Any:
            return loop.run_until_complete(result) if asynchronous else result

        quota = [Hit(key(), 10, WINDOW_MS, 1, "fixed-window")]
        try:
            assert do(storage.acquire(quota))[0].remaining == 9
            proxy.inject(b"?not RESP\r\n")
            outcomes = []
            for _ in range(3):
                try:
                    outcomes.append(do(storage.acquire(quota))[0].remaining)
                except StorageError as exc:
                    assert "Protocol error" in str(exc)
                    outcomes.append(None)
            # The failed call's script may have run (counted once), or not: never twice, and
            # the calls after it are answered right.
            assert outcomes in ([None, 7, 6], [None, 8, 7], [8, 7, 6]), outcomes
        finally:
            do(storage.aclose() if asynchronous else storage.close())
            loop.close()


def _public(cls: type) -> set[str]:
    names = {n for n, v in inspect.getmembers(cls) if not n.startswith("_") and callable(v)}
    return {"close" if n == "aclose" else n for n in names}


@pytest.mark.parametrize(
    ("sync", "asynchronous"),
    [
        (Pipe, AsyncPipe),
        (RedisPyScripts, AsyncRedisPyScripts),
        (ClusterScripts, AsyncClusterScripts),
    ],
    ids=["pipe", "redis-py", "cluster"],
)
def test_each_transports_twins_offer_the_same_calls(sync: type, asynchronous: type) -> None:
    assert _public(sync) == _public(asynchronous)
    assert {"script", "close"} <= _public(sync)
    assert inspect.iscoroutinefunction(asynchronous.script)
    assert inspect.iscoroutinefunction(asynchronous.aclose)
    assert not inspect.iscoroutinefunction(sync.script)
    # The protocol's one signature, the kept packed call included.
    for cls in (sync, asynchronous):
        assert list(inspect.signature(cls.script).parameters) == [
            "self",
            "sha",
            "text",
            "keys",
            "args",
            "packed",
        ]
