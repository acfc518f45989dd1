"""What only the Redis storage promises: round trips, the blocked cache, the server's clock,
cluster slots and refunds, prefixes, start-up under concurrency, options, faults.

Everything runs against real ``redis-server`` processes (``tests/redis_servers.py``).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from ratemw import ConfigurationError, Limiter, StorageError
from ratemw.engine.hits import KeyHasher, storage_key
from ratemw.engine.plans import key_tail
from ratemw.policy.limits import parse_quotas
from ratemw.storage import Hit, Usage
from ratemw.storage.base import Batch
from ratemw.storage.redis import SCRIPT_SHA, AsyncRedisStorage, RedisStorage
from ratemw.storage.redis.pool import Slots as _Slots
from ratemw.storage.redis.resp import evalsha_command
from tests.redis_servers import RedisCluster, RedisSentinel, RedisServer
from tests.storage.test_storage_contract import TEST_OPTIONS, key

WINDOW_MS = 60_000


def three_hits(tag: str = "caller", amount: int = 1_000) -> list[Hit]:
    """Three limits of one caller (as a route with "a/minute;b/hour;c/day" would give)."""
    return [
        Hit(f"ratemw:{{{tag}}}:/r:fw:{amount}/60", amount, WINDOW_MS, 1, "fixed-window"),
        Hit(f"ratemw:{{{tag}}}:/r:mw:{amount}/3600", amount, 3_600_000, 1, "moving-window"),
        Hit(
            f"ratemw:{{{tag}}}:*:sw:{amount}/86400", amount, 86_400_000, 1, "sliding-window-counter"
        ),
    ]


def reads(server: Any) -> int:
    return int(server.reads_processed())


@pytest.fixture(params=["redis", "cluster"])
def server(request: pytest.FixtureRequest) -> Any:
    name = "redis_standalone_clean" if request.param == "redis" else "redis_cluster_clean"
    return request.getfixturevalue(name)


# -- one round trip ------------------------------------------------------------------------------


def test_one_round_trip_per_acquire_sync(server: Any) -> None:
    storage = RedisStorage(server.url, **TEST_OPTIONS)
    try:
        hits = three_hits()
        storage.peek(hits)  # connect (HELLO / CLIENT SETINFO) and load the script first
        before = reads(server)
        for _ in range(25):
            assert all(u.fits for u in storage.acquire(hits))
        assert reads(server) - before == 25
    finally:
        storage.close()


def test_one_round_trip_per_acquire_async(server: Any) -> None:
    async def main() -> int:
        storage = AsyncRedisStorage(server.url, **TEST_OPTIONS)
        try:
            hits = three_hits()
            await storage.peek(hits)
            before = reads(server)
            for _ in range(25):
                assert all(u.fits for u in await storage.acquire(hits))
            return reads(server) - before
        finally:
            await storage.aclose()

    assert asyncio.run(main()) == 25


# -- refused callers are remembered --------------------------------------------------------------


def _close_enough(cached: Usage, fresh: Usage, elapsed_ms: float) -> bool:
    """The cached refusal equals Redis's answer, less the time that passed in between."""
    assert fresh.wait_ms is not None and cached.wait_ms is not None
    return (
        cached.fits == fresh.fits is False
        and cached.remaining == fresh.remaining
        and abs(cached.reset_ms - fresh.reset_ms) <= elapsed_ms
        and abs(cached.wait_ms - fresh.wait_ms) <= elapsed_ms
    )


def test_a_blocked_caller_costs_no_round_trips_until_its_wait_passes(server: Any) -> None:
    storage = RedisStorage(server.url, **TEST_OPTIONS)
    try:
        hits = three_hits(amount=2)
        short = [Hit(h.key + ":short", 2, 700, 1, h.strategy) for h in hits]
        for batch in (hits, short):
            assert all(u.fits for u in storage.acquire(batch))
            assert all(u.fits for u in storage.acquire(batch))
            refused = storage.acquire(batch)  # the refusal that is remembered
            answered = time.monotonic()
            assert not any(u.fits for u in refused)
        before = reads(server)
        started = time.monotonic()
        cached = [storage.acquire(hits) for _ in range(50)]
        assert reads(server) - before == 0
        fresh = storage.peek(hits)  # what Redis says now
        elapsed_ms = (time.monotonic() - started) * 1000 + 2
        for usage, answer in zip(cached[-1], fresh, strict=True):
            assert _close_enough(usage, answer, elapsed_ms)
        # Once the shortest wait has passed, Redis is asked again, and has room again.
        longest = max(u.wait_ms or 0 for u in refused) / 1000
        time.sleep(max(answered + longest + 0.005 - time.monotonic(), 0))
        before = reads(server)
        assert all(u.fits for u in storage.acquire(short))
        assert reads(server) - before == 1
    finally:
        storage.close()


def test_refusals_that_can_end_early_are_not_remembered(
    redis_standalone_clean: RedisServer,
) -> None:
    """A concurrency slot may free at any moment; a refund frees units before the wait ends."""
    storage = RedisStorage(redis_standalone_clean.url, **TEST_OPTIONS)
    try:
        name = key("in-flight")
        first = Hit(name, 1, WINDOW_MS, 1, "concurrency", token="a")
        second = Hit(name, 1, WINDOW_MS, 1, "concurrency", token="b")
        assert storage.acquire([first])[0].fits
        assert not storage.acquire([second])[0].fits
        storage.release([first])
        assert storage.acquire([second])[0].fits
        quota = Hit(key(), 1, WINDOW_MS, 1, "fixed-window")
        taken = storage.acquire([quota])[0]
        assert not storage.acquire([quota])[0].fits  # remembered...
        storage.refund([quota], taken.stamp_ms)  # ...until units are handed back
        assert storage.acquire([quota])[0].fits
    finally:
        storage.close()


# -- scripts and restarts ------------------------------------------------------------------------


@pytest.mark.parametrize("kept", [False, True], ids=["hits", "kept-batch"])
def test_script_flush_does_not_reach_the_caller(
    redis_standalone_clean: RedisServer, kept: bool
) -> None:
    storage = RedisStorage(redis_standalone_clean.url, **TEST_OPTIONS)
    admin = redis_standalone_clean.client()
    try:
        hits = Batch(three_hits(amount=10)) if kept else three_hits(amount=10)
        assert storage.acquire(hits)[0].remaining == 9
        admin.script_flush()  # a kept batch's call is an EVALSHA the server no longer knows
        assert storage.acquire(hits)[0].remaining == 8
        assert storage.acquire(hits)[0].remaining == 7
    finally:
        admin.close()
        storage.close()


@pytest.mark.parametrize("kept", [False, True], ids=["hits", "kept-batch"])
def test_script_flush_does_not_reach_the_caller_async(
    redis_standalone_clean: RedisServer, kept: bool
) -> None:
    async def main() -> list[int]:
        storage = AsyncRedisStorage(redis_standalone_clean.url, **TEST_OPTIONS)
        admin = redis_standalone_clean.client()
        try:
            hits = Batch(three_hits(amount=10)) if kept else three_hits(amount=10)
            first = (await storage.acquire(hits))[0].remaining
            admin.script_flush()
            second = (await storage.acquire(hits))[0].remaining
            return [first, second, (await storage.acquire(hits))[0].remaining]
        finally:
            admin.close()
            await storage.aclose()

    assert asyncio.run(main()) == [9, 8, 7]


def test_a_kept_batch_keeps_its_script_call(redis_standalone_clean: RedisServer) -> None:
    # A repeat caller's hits come as one kept Batch: its EVALSHA is packed once and sent
    # again as is. A call kept for another script (another SHA) is never sent.
    sync = RedisStorage(redis_standalone_clean.url, **TEST_OPTIONS)

    async def twice_async(batch: Batch) -> list[int]:
        storage = AsyncRedisStorage(redis_standalone_clean.url, **TEST_OPTIONS)
        try:
            return [(await storage.acquire(batch))[0].remaining for _ in range(2)]
        finally:
            await storage.aclose()

    try:
        for tag, twice in (
            ("sync", lambda b: [sync.acquire(b)[0].remaining for _ in range(2)]),
            ("async", lambda b: asyncio.run(twice_async(b))),
        ):
            batch = Batch(three_hits(tag, amount=10))
            assert twice(batch) == [9, 8]
            sha, (keys, args, command) = batch.wire
            assert sha == SCRIPT_SHA and keys == [hit.key for hit in batch]
            assert command == evalsha_command(SCRIPT_SHA, keys, args)
            kept = batch.wire
            assert twice(batch) == [7, 6]
            assert batch.wire is kept  # sent again as it was, not built again
            batch.wire = ("0" * 40, (keys, args, b"*1\r\n$4\r\nPING\r\n"))
            assert twice(batch) == [5, 4]  # rebuilt for this script, not a PING
            assert batch.wire[0] == SCRIPT_SHA
    finally:
        sync.close()


def test_a_restarted_server_is_used_again_without_errors(redis_server_private: RedisServer) -> None:
    sync = RedisStorage(redis_server_private.url, **TEST_OPTIONS)

    async def main() -> None:
        storage = AsyncRedisStorage(redis_server_private.url, **TEST_OPTIONS)
        try:
            hits = three_hits(amount=10)
            assert (await storage.acquire(hits))[0].remaining == 9
            assert sync.acquire(hits)[0].remaining == 8
            redis_server_private.restart()  # counts are gone, the script cache too
            assert (await storage.acquire(hits))[0].remaining == 9
            assert sync.acquire(hits)[0].remaining == 8
        finally:
            await storage.aclose()

    try:
        asyncio.run(main())
    finally:
        sync.close()


def test_a_hung_server_fails_within_the_socket_timeout(redis_server_private: RedisServer) -> None:
    storage = RedisStorage(redis_server_private.url, socket_timeout=0.2)
    try:
        storage.acquire(three_hits())
        redis_server_private.pause(1.0)
        started = time.monotonic()
        with pytest.raises(StorageError, match="Timeout"):
            storage.acquire(three_hits())
        # One timeout, no retries of a command that may have run.
        assert time.monotonic() - started < 0.6
    finally:
        storage.close()


# -- the server's clock ------------------------------------------------------------------------


def test_decisions_use_the_server_clock(
    redis_standalone_clean: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    honest = RedisStorage(redis_standalone_clean.url, **TEST_OPTIONS)
    skewed = RedisStorage(redis_standalone_clean.url, **TEST_OPTIONS)
    admin = redis_standalone_clean.client()
    real_time, real_time_ns = time.time, time.time_ns
    try:
        hits = [Hit(key(), 3, 2_000, 1, s) for s in ("fixed-window", "moving-window")]
        hits.append(Hit(key(), 3, 2_000, 1, "sliding-window-counter"))
        first = honest.acquire(hits)
        with monkeypatch.context() as skew:  # this host's clock is an hour ahead
            skew.setattr(time, "time", lambda: real_time() + 3600)
            skew.setattr(time, "time_ns", lambda: real_time_ns() + 3600 * 10**9)
            second = skewed.acquire(hits)
        seconds, micros = admin.time()
        server_ms = seconds * 1000 + micros // 1000
        assert [u.remaining for u in first] == [2, 2, 2]
        assert [u.remaining for u in second] == [1, 1, 1]
        for before, after in zip(first, second, strict=True):
            assert 0 <= after.stamp_ms - before.stamp_ms < 1_000
            assert abs(after.stamp_ms - server_ms) < 1_000
    finally:
        admin.close()
        honest.close()
        skewed.close()


# -- cluster -------------------------------------------------------------------------------------


def test_one_callers_keys_share_one_slot(redis_cluster_clean: RedisCluster) -> None:
    limiter = Limiter(storage=redis_cluster_clean.url)
    digest = KeyHasher()("198.51.100.7")
    quotas = parse_quotas("5/second;100/minute;1000/hour")
    settings = limiter.settings
    keys = [
        storage_key(settings, digest, key_tail(settings.strategy, b, q))
        for b in ("GET /a", "*")
        for q in quotas
    ]
    assert len({redis_cluster_clean.keyslot(k) for k in keys}) == 1
    storage = RedisStorage(redis_cluster_clean.url, **TEST_OPTIONS)
    try:
        hits = [
            Hit(k, q.amount, q.window_ms, 1, "fixed-window")
            for k, q in zip(keys, quotas * 2, strict=True)
        ]
        assert all(u.fits for u in storage.acquire(hits))
        node = redis_cluster_clean.node_for_key(keys[0])
        client = node.client()
        try:
            assert client.exists(*keys) == len(keys)
        finally:
            client.close()
    finally:
        storage.close()


def _tags_on_two_slots(cluster: RedisCluster) -> tuple[str, str]:
    owners = cluster.slot_owners()
    user = "user-1"
    for n in range(1000):
        address = f"addr-{n}"
        if owners[cluster.keyslot(address)] is not owners[cluster.keyslot(user)]:
            return user, address
    raise AssertionError("no two tags on different nodes")  # pragma: no cover


def _two_identity_hits(user: str, address: str, strategy: str) -> list[Hit]:
    return [
        Hit(f"ratemw:{{{user}}}:/r:x:5/60", 5, WINDOW_MS, 1, strategy),
        Hit(f"ratemw:{{{address}}}:/r:x:3/60", 3, WINDOW_MS, 1, strategy),
    ]


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
def test_a_request_across_slots_is_refunded_when_a_later_slot_refuses(
    redis_cluster_clean: RedisCluster, strategy: str
) -> None:
    user, address = _tags_on_two_slots(redis_cluster_clean)
    hits = _two_identity_hits(user, address, strategy)
    storage = RedisStorage(redis_cluster_clean.url, blocked_cache_size=0, **TEST_OPTIONS)
    try:
        answers = [storage.acquire(hits) for _ in range(5)]
        assert [[u.fits for u in a] for a in answers] == [[True, True]] * 3 + [[True, False]] * 2
        # The refused requests report the per-user quota as it stands: nothing taken.
        assert [a[0].remaining for a in answers] == [4, 3, 2, 2, 2]
        assert storage.peek(hits[:1])[0].remaining == 2
    finally:
        storage.close()


def test_concurrent_requests_across_slots_never_over_admit(
    redis_cluster_clean: RedisCluster,
) -> None:
    user, address = _tags_on_two_slots(redis_cluster_clean)
    hits = _two_identity_hits(user, address, "fixed-window")
    # A second route of the same user, limited per address too but by a roomier quota.
    other = [
        Hit(hits[0].key, 5, WINDOW_MS, 1, "fixed-window"),
        Hit(f"ratemw:{{{address}}}:/s:x:50/60", 50, WINDOW_MS, 1, "fixed-window"),
    ]

    async def main() -> list[Any]:
        storage = AsyncRedisStorage(redis_cluster_clean.url, **TEST_OPTIONS)
        try:
            batches = [hits if i % 2 else other for i in range(60)]
            return await asyncio.gather(
                *(storage.acquire(b) for b in batches), return_exceptions=True
            )
        finally:
            await storage.aclose()

    results = asyncio.run(main())
    assert not [r for r in results if isinstance(r, BaseException)]
    admitted = [r for r in results if all(u.fits for u in r)]
    assert len(admitted) == 5  # the per-user quota, shared by both routes
    sync = RedisStorage(redis_cluster_clean.url, **TEST_OPTIONS)
    try:
        # Every refused request handed back what it took: the counts are the admitted ones.
        assert sync.peek(hits)[0].remaining == 0
        on_route = sum(1 for r in admitted if r[1].remaining < 3)
        assert sync.peek(hits)[1].remaining == 3 - on_route
    finally:
        sync.close()


def test_a_cold_async_cluster_storage_starts_once_under_concurrency(
    redis_cluster_clean: RedisCluster,
) -> None:
    async def main() -> list[Any]:
        storage = AsyncRedisStorage(redis_cluster_clean.url, **TEST_OPTIONS)
        quota = [Hit(key("cold"), 37, WINDOW_MS, 1, "fixed-window")]
        try:
            return await asyncio.gather(
                *(storage.acquire(quota) for _ in range(100)), return_exceptions=True
            )
        finally:
            await storage.aclose()

    results = asyncio.run(main())
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert sum(1 for r in results if r[0].fits) == 37


# -- prefixes ------------------------------------------------------------------------------------


def test_two_prefixes_in_one_redis_are_isolated(redis_standalone_clean: RedisServer) -> None:
    one = RedisStorage(redis_standalone_clean.url, key_prefix="app1", **TEST_OPTIONS)
    two = RedisStorage(redis_standalone_clean.url, key_prefix="app*", **TEST_OPTIONS)
    admin = redis_standalone_clean.client()
    try:
        first = Hit("app1:{c}:/r:fw:2/60", 2, WINDOW_MS, 1, "fixed-window")
        second = Hit("app*:{c}:/r:fw:2/60", 2, WINDOW_MS, 1, "fixed-window")
        assert one.acquire([first])[0].remaining == 1
        assert two.acquire([second])[0].remaining == 1
        assert two.acquire([second])[0].remaining == 0
        assert one.acquire([first])[0].remaining == 0
        admin.set("unrelated", "kept")
        two.reset()  # "app*" is a prefix, not a pattern: app1's keys stay
        assert admin.exists(first.key) == 1
        assert admin.exists(second.key) == 0
        one.reset()
        assert admin.exists(first.key) == 0
        assert admin.get("unrelated") == "kept"
    finally:
        admin.close()
        one.close()
        two.close()


# -- sentinel ------------------------------------------------------------------------------------


def test_sentinel_storage_follows_a_failover(redis_sentinel_clean: RedisSentinel) -> None:
    storage = RedisStorage(redis_sentinel_clean.url, **TEST_OPTIONS)

    async def main() -> None:
        aio = AsyncRedisStorage(redis_sentinel_clean.url, **TEST_OPTIONS)
        try:
            quota = [Hit(key(), 10, WINDOW_MS, 1, "fixed-window")]
            assert storage.acquire(quota)[0].fits
            assert (await aio.acquire(quota))[0].fits
            promoted = redis_sentinel_clean.failover()
            # The new master got the counts by replication and takes the next ones.
            assert storage.acquire(quota)[0].remaining == 7
            assert (await aio.acquire(quota))[0].remaining == 6
            direct = RedisStorage(promoted.url, **TEST_OPTIONS)
            try:
                assert direct.peek(quota)[0].remaining == 6
            finally:
                direct.close()
        finally:
            await aio.aclose()

    try:
        asyncio.run(main())
    finally:
        storage.close()


# -- URIs and options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "options", "named"),
    [
        pytest.param("redis://localhost:abc", {}, "'abc'", id="port not a number"),
        pytest.param("redis://localhost:70000", {}, "'70000'", id="port out of range"),
        pytest.param("redis://localhost/zero", {}, "'zero'", id="database not a number"),
        pytest.param("redis+cluster://a:1,b:x", {}, "'x'", id="cluster port"),
        pytest.param("redis+cluster://a:1/3", {}, "database 0", id="cluster database"),
        pytest.param("redis+sentinel://localhost:26379", {}, "service", id="no sentinel service"),
        pytest.param("redis+unix://", {}, "socket path", id="no socket path"),
        pytest.param("http://localhost", {}, "'http'", id="unknown scheme"),
        pytest.param("redis://localhost", {"socket_timeuot": 1}, "socket_timeuot", id="typo"),
        pytest.param("redis://localhost", {"socket_timeout": "fast"}, "'fast'", id="bad number"),
        pytest.param(
            "redis://localhost", {"max_connections": 0}, "max_connections=0", id="zero connections"
        ),
        pytest.param("redis://localhost?max_connections=lots", {}, "'lots'", id="bad query"),
        pytest.param("redis://localhost?colour=red", {}, "colour", id="unknown query option"),
        pytest.param(
            "redis://localhost",
            {"ssl_ca_certs": "/ca.pem"},
            "rediss://",
            id="TLS option without TLS",
        ),
    ],
)
def test_bad_uris_and_options_are_refused_naming_the_value(
    uri: str, options: dict[str, Any], named: str
) -> None:
    for factory in (RedisStorage, AsyncRedisStorage):
        with pytest.raises(ConfigurationError) as caught:
            factory(uri, **options)
        assert named in str(caught.value)
    with pytest.raises(ConfigurationError, match=named.replace("*", r"\*")):
        Limiter(storage=uri, storage_options=options)


def test_a_password_never_shows_in_errors() -> None:
    with pytest.raises(ConfigurationError) as caught:
        RedisStorage("redis://user:s3cret@localhost:port")
    assert "s3cret" not in str(caught.value)


def test_connection_options_reach_the_connections() -> None:
    storage = RedisStorage(
        "redis://localhost:1/2?socket_timeout=0.75&max_connections=5",
        socket_connect_timeout=0.5,
        health_check_interval=3,
    )
    try:
        kwargs = storage.client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 0.75
        assert kwargs["socket_connect_timeout"] == 0.5
        assert kwargs["health_check_interval"] == 3
        assert kwargs["db"] == 2
        assert storage.client.connection_pool.max_connections == 5
        explicit = RedisStorage("redis://localhost?socket_timeout=0.75", socket_timeout=2)
        assert explicit.client.connection_pool.connection_kwargs["socket_timeout"] == 2
        explicit.close()
        tls = RedisStorage("rediss://localhost:6380", ssl_cert_reqs="none")
        assert tls.client.connection_pool.connection_class is redis.SSLConnection
        tls.close()
    finally:
        storage.close()


@pytest.fixture
def unix_socket_server() -> Iterator[tuple[RedisServer, str]]:
    directory = tempfile.mkdtemp(prefix="ratemw-sock-", dir="/tmp")  # short: sun_path limit
    path = str(Path(directory) / "redis.sock")
    server = RedisServer(name="unix", config_lines=[f"unixsocket {path}", "unixsocketperm 700"])
    try:
        server.start()
        yield server, path
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_unix_socket(unix_socket_server: tuple[RedisServer, str]) -> None:
    server, path = unix_socket_server
    uri = f"redis+unix://{path}"
    storage = RedisStorage(uri, **TEST_OPTIONS)

    async def main() -> int:
        aio = AsyncRedisStorage(uri, **TEST_OPTIONS)
        try:
            return (await aio.acquire(three_hits(amount=5)))[0].remaining
        finally:
            await aio.aclose()

    try:
        assert storage.acquire(three_hits(amount=5))[0].remaining == 4
        assert asyncio.run(main()) == 3
        admin = server.client()
        try:
            clients = admin.client_list()
        finally:
            admin.close()
        # The sync storage's pooled connection is still open: over the socket, not TCP.
        assert any(path in c.get("laddr", "") for c in clients), clients
        assert storage.client.connection_pool.connection_class is redis.UnixDomainSocketConnection
    finally:
        storage.close()


def test_sync_storage_is_safe_across_threads(redis_standalone_clean: RedisServer) -> None:
    storage = RedisStorage(
        redis_standalone_clean.url, max_connections=4, pool_timeout=5, **TEST_OPTIONS
    )
    quota = [Hit(key(), 40, WINDOW_MS, 1, "moving-window")]
    admitted: list[bool] = []
    errors: list[BaseException] = []

    def worker() -> None:
        for _ in range(10):
            try:
                admitted.append(storage.acquire(quota)[0].fits)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(12)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        storage.close()
    assert errors == []
    assert admitted.count(True) == 40


def test_connection_slots_say_whether_a_thread_waited() -> None:
    # True: a slot at once; None: one handed over after waiting (behind calls that may have
    # failed: the storage then fails this one too, rather than let it pay another timeout);
    # False: none within the timeout.
    slots = _Slots(1)
    assert slots.acquire(1.0) is True
    assert slots.acquire(0.01) is False
    found: list[bool | None] = []
    waiter = threading.Thread(target=lambda: found.append(slots.acquire(5.0)))
    waiter.start()
    deadline = time.monotonic() + 5
    while not slots._waiters and time.monotonic() < deadline:
        time.sleep(0.001)
    slots.release()  # handed straight to the waiting thread
    waiter.join()
    assert found == [None]
    slots.release()
    assert slots.acquire(0.01) is True


def test_a_slot_given_back_while_a_thread_queues_is_taken_by_it() -> None:
    # The race the lock-free release must not lose: the thread finds no free slot and goes
    # for the lock; before it queues, the holder gives its slot back and, seeing nobody
    # queued, keeps no lock. Once queued, the thread must find that slot, not wait it out.
    slots = _Slots(1)
    assert slots.acquire(1.0) is True  # held

    class ReleasingLock:
        """The slots' lock, with the holder's release slipped in as the thread takes it."""

        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.pending = True

        def __enter__(self) -> None:
            if self.pending:
                self.pending = False
                slots.release()  # nobody has queued yet: the slot goes back to the pool
            self.lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self.lock.release()

    slots._lock = ReleasingLock()  # type: ignore[assignment]
    started = time.monotonic()
    assert slots.acquire(1.0) is True  # taken once queued, without waiting
    assert time.monotonic() - started < 0.5
    assert slots.free == 0 and not slots._waiters


def test_connection_slots_hold_under_contention() -> None:
    # While nobody waits, slots are taken and given back without the lock; a thread that
    # queues looks for a slot again once queued. Under heavy switching: never more holders
    # than slots, no thread left waiting while a slot is free, and every slot comes back.
    slots = _Slots(2)
    state = {"holders": 0, "most": 0}
    lock = threading.Lock()
    answers: list[bool | None] = []

    def work() -> None:
        for _ in range(300):
            taken = slots.acquire(2.0)
            answers.append(taken)
            if taken is False:
                return  # the test fails: no need to wait out more timeouts
            with lock:
                state["holders"] += 1
                state["most"] = max(state["most"], state["holders"])
            time.sleep(0)
            with lock:
                state["holders"] -= 1
            slots.release()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert False not in answers  # nobody waited out the timeout
    assert None in answers  # the slow path (queueing, handing over) was taken
    assert state["most"] <= 2
    assert slots.free == 2  # none lost, none made up


def test_a_call_that_waited_behind_a_failed_one_fails_without_being_sent(
    redis_server_private: RedisServer,
) -> None:
    # One connection. A's call meets a paused server and times out; B, waiting for the
    # connection meanwhile, is handed it and fails at once instead of paying a timeout of its
    # own. C, which takes the connection without waiting once the server answers, succeeds.
    server = redis_server_private
    storage = RedisStorage(
        server.url,
        max_connections=1,
        pool_timeout=5,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
    )
    hits = [Hit(key(), 10, WINDOW_MS, 1, "fixed-window")]
    outcomes: dict[str, tuple[float, BaseException | None]] = {}

    def call(name: str) -> None:
        started = time.monotonic()
        try:
            storage.acquire(hits)
            outcomes[name] = (time.monotonic() - started, None)
        except BaseException as exc:
            outcomes[name] = (time.monotonic() - started, exc)

    def wait_for(condition: Any) -> None:
        deadline = time.monotonic() + 5
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.001)

    try:
        storage.acquire(hits)  # connected, script loaded
        pauser = threading.Thread(target=server.pause, args=(1.5,))
        pauser.start()
        time.sleep(0.1)  # the pause is in force
        a = threading.Thread(target=call, args=("a",))
        a.start()
        wait_for(lambda: storage._slots.free == 0)
        b = threading.Thread(target=call, args=("b",))
        b.start()
        wait_for(lambda: storage._slots._waiters)
        a.join()
        b.join()
        pauser.join()
        server.unpause()  # returns once the pause is over
        call("c")
    finally:
        storage.close()
    a_took, a_error = outcomes["a"]
    b_took, b_error = outcomes["b"]
    assert isinstance(a_error, StorageError) and "Timeout" in str(a_error)
    assert isinstance(b_error, StorageError) and "ahead of this one failed" in str(b_error)
    assert b_took < a_took + 0.3  # B waited for A's timeout, and not for one of its own
    assert outcomes["c"][1] is None
