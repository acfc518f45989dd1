"""Script calls on a Redis Cluster: redirections followed, waits bounded.

The storage sends its scripts to the node owning their slot itself (``_cluster.py``): it
follows ``MOVED`` and ``ASK`` (the redirecting node ran nothing), and fails at once on
anything else. redis-py's cluster client sleeps 0.25 s on ``CLUSTERDOWN`` (and retries),
which made every request wait about half a second. All of it against a cluster of this
module's own: a slot is migrated, a node is killed until the others declare the cluster
down (every request, sync and async, must then fail within 0.2 s: docs/failure-modes.md,
one socket timeout, two on a Cluster when a new connection answers late), and counting
resumes on the same storages once the node is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from ratemw import StorageError
from ratemw.storage import Hit
from ratemw.storage.redis import AsyncRedisStorage, RedisStorage
from tests.redis_servers import RedisCluster, RedisServer, require_redis_binaries

BOUND = 0.2  # seconds: the documented bound on a Cluster, with the default timeouts
REQUESTS = 20


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    require_redis_binaries("redis-server", "redis-cli")
    with RedisCluster(node_timeout_ms=500) as running:
        yield running


def _keys_by_node(cluster: RedisCluster) -> dict[int, str]:
    """One key per node (by port), each in a slot that node owns."""
    owners = cluster.slot_owners()
    found: dict[int, str] = {}
    for n in range(10_000):
        name = f"ratemw:{{caller-{n}}}:/r:fw"
        found.setdefault(owners[cluster.keyslot(name)].port, name)
        if len(found) == len(cluster.nodes):
            return found
    raise AssertionError("no key for every node")  # pragma: no cover


def _acquire(asynchronous: bool, uri: str, hits: list[Hit], before: Any) -> int:
    """``before(client)`` on the storage's initialised cluster client, then one acquire."""
    if not asynchronous:
        storage = RedisStorage(uri)
        try:
            storage.peek(hits)  # the slot map is loaded
            before(storage.client)
            return storage.acquire(hits)[0].remaining
        finally:
            storage.close()

    async def main() -> int:
        storage = AsyncRedisStorage(uri)
        try:
            await storage.peek(hits)
            before(storage.client)
            await asyncio.sleep(0.05)  # the event loop gets to what arrived meanwhile
            return (await storage.acquire(hits))[0].remaining
        finally:
            await storage.aclose()

    return asyncio.run(main())


def _other(cluster: RedisCluster, node: RedisServer) -> RedisServer:
    return next(n for n in cluster.nodes if n is not node)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_moved_is_followed_and_the_map_patched(cluster: RedisCluster, asynchronous: bool) -> None:
    name = f"ratemw:{{moved-{asynchronous}}}:/r:fw"
    slot = cluster.keyslot(name)
    owner = cluster.node_for_key(name)
    wrong = _other(cluster, owner)
    patched: list[int] = []

    def stale_map(client: Any) -> None:  # the slot points at a node that does not own it
        manager = client.nodes_manager
        manager.slots_cache[slot] = [manager.get_node(host=wrong.host, port=wrong.port)]
        patched.append(id(manager))

    remaining = _acquire(
        asynchronous, cluster.url, [Hit(name, 10, 60_000, 1, "fixed-window")], stale_map
    )
    assert patched and remaining == 9  # counted once, on the owner
    assert owner._admin("HGET", name, "c") == "1"


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_ask_is_followed_during_a_migration(cluster: RedisCluster, asynchronous: bool) -> None:
    # The slot is migrating to another node and the key is not on its owner: the owner
    # answers ASK, and the script runs on the importing node after ASKING.
    name = f"ratemw:{{asked-{asynchronous}}}:/r:fw"
    slot = cluster.keyslot(name)
    source = cluster.node_for_key(name)
    target = _other(cluster, source)
    source_id, target_id = source._admin("CLUSTER", "MYID"), target._admin("CLUSTER", "MYID")
    target._admin("SCRIPT", "FLUSH")  # the importing node must be sent EVAL after ASKING
    target._admin("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source._admin("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    try:
        remaining = _acquire(
            asynchronous,
            cluster.url,
            [Hit(name, 10, 60_000, 1, "fixed-window")],
            lambda client: None,
        )
        assert remaining == 9
        with target.client() as direct:
            pipe = direct.pipeline(transaction=False)
            pipe.execute_command("ASKING")
            pipe.hget(name, "c")
            pipe.execute_command("ASKING")
            pipe.delete(name)
            assert pipe.execute()[1] == "1"  # counted once, on the importing node
        with pytest.raises(redis.exceptions.AskError):  # not on the source: it redirects
            source._admin("EXISTS", name)
    finally:
        for node in (source, target):
            node._admin("CLUSTER", "SETSLOT", slot, "NODE", source_id)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_node_connection_closed_while_idle_is_replaced_not_failed(
    cluster: RedisCluster, asynchronous: bool
) -> None:
    # The owner closes every client connection between two calls: the second call finds out
    # before writing, and goes out on a new connection: it neither fails nor counts twice.
    name = f"ratemw:{{killed-{asynchronous}}}:/r:fw"
    owner = cluster.node_for_key(name)
    hits = [Hit(name, 10, 60_000, 1, "fixed-window")]

    def kill(client: Any) -> None:
        with owner.client() as admin:
            assert int(admin.execute_command("CLIENT", "KILL", "TYPE", "normal")) >= 1
        time.sleep(0.05)  # the end of stream reaches the storage's socket

    assert _acquire(asynchronous, cluster.url, hits, kill) == 9  # peek, kill, acquire
    assert owner._admin("HGET", name, "c") == "1"


def _wait(condition: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _down(cluster: RedisCluster, node: RedisServer) -> bool:
    return cluster.cluster_info(node).get("cluster_state") == "fail"


def _timed(call: Any) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        call()
    except BaseException as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


async def _timed_async(call: Any) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        await call()
    except BaseException as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


def test_a_cluster_that_is_down_costs_a_request_no_more_than_the_bound(
    cluster: RedisCluster,
) -> None:
    keys = _keys_by_node(cluster)
    dead, alive = cluster.nodes[0], cluster.nodes[1:]
    hits = {port: [Hit(name, 1_000, 60_000, 1, "fixed-window")] for port, name in keys.items()}
    sync = RedisStorage(cluster.url, blocked_cache_size=0)

    async def main() -> tuple[list[tuple[float, BaseException | None]], list[bool]]:
        storage = AsyncRedisStorage(cluster.url, blocked_cache_size=0)
        try:
            assert all([(await storage.acquire(h))[0].fits for h in hits.values()])
            await asyncio.to_thread(_kill_and_wait)
            outcomes = [
                await _timed_async(lambda h=h: storage.acquire(h))  # type: ignore[misc]
                for _ in range(REQUESTS // len(hits))
                for h in hits.values()
            ]
            await asyncio.to_thread(_restart)
            return outcomes, await _until_counted_async(storage, hits)
        finally:
            await storage.aclose()

    def _kill_and_wait() -> None:
        if dead.is_running():
            dead.kill()
            _wait(lambda: all(_down(cluster, node) for node in alive), "CLUSTERDOWN")

    def _restart() -> None:
        if not dead.is_running():
            dead.start()
            cluster.wait_ready()

    try:
        assert all(sync.acquire(h)[0].fits for h in hits.values())
        _kill_and_wait()
        sync_outcomes = [
            _timed(lambda h=h: sync.acquire(h))  # type: ignore[misc]
            for _ in range(REQUESTS // len(hits))
            for h in hits.values()
        ]
        _restart()
        sync_back = _until_counted(sync, hits)
        async_outcomes, async_back = asyncio.run(main())
    finally:
        sync.close()
        _restart()
    for name, outcomes in (("sync", sync_outcomes), ("async", async_outcomes)):
        print(
            f"\n{name}: {len(outcomes)} requests to a cluster that is down, slowest "
            f"{max(took for took, _ in outcomes) * 1000:.1f} ms"
        )
        errors = [error for _, error in outcomes]
        assert all(isinstance(error, StorageError) for error in errors), errors
        assert any("CLUSTERDOWN" in str(error) or "ClusterDown" in str(error) for error in errors)
        slowest = max(took for took, _ in outcomes)
        assert slowest < BOUND, f"a request took {slowest:.3f} s: {outcomes}"
    assert sync_back and async_back  # counting resumed on the same storages


def _until_counted(storage: RedisStorage, hits: dict[int, list[Hit]]) -> list[bool]:
    deadline = time.monotonic() + 10
    while True:
        try:
            return [storage.acquire(h)[0].fits for h in hits.values()]
        except StorageError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def _until_counted_async(
    storage: AsyncRedisStorage, hits: dict[int, list[Hit]]
) -> list[bool]:
    deadline = time.monotonic() + 10
    while True:
        try:
            return [(await storage.acquire(h))[0].fits for h in hits.values()]
        except StorageError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
