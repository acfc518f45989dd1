"""A script that may have run is never sent again: killed connections never count a call twice.

While a thread kills every script connection of real ``redis-server``s (``CLIENT KILL``)
every few milliseconds, calls keep counting, each on a key of its own: on a single server
(the storages' own connections, and redis-py's when asked), a Cluster and a Sentinel-managed
master (redis-py's). A kill that lands after the server ran a call's script and before its
reply left loses the reply: the call fails (the script's count stays, as it should: it ran
once). Sending it again would count it twice. Afterwards every key holds 1 (its call was
admitted, or failed after running) or nothing (it failed before running), never 2.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from ratemw import StorageError
from ratemw.storage import Hit
from ratemw.storage.redis import AsyncRedisStorage, RedisStorage
from tests.redis_servers import RedisServer
from tests.storage.test_storage_contract import TEST_OPTIONS

BATCH = 25  # concurrent calls at a time under asyncio: several waiting when a kill lands
KILL_EVERY = 0.002
# Calls per backend: enough for tens of kills to land between a script and its reply.
CALLS = {"redis": 10_000, "redis-via-redis-py": 4_000, "cluster": 4_000, "sentinel": 4_000}
SERVERS = {
    "redis": "redis_server_private",
    "redis-via-redis-py": "redis_server_private",
    "cluster": "redis_cluster_clean",
    "sentinel": "redis_sentinel_clean",
}
# Options in the URI's query string: the single server through both script transports.
QUERIES = {"redis-via-redis-py": "?transport=redis-py"}


def _script_connections(admin: Any) -> list[int]:
    """The ids of the connections whose last command was a script (the storage's)."""
    return [int(c["id"]) for c in admin.client_list() if c.get("cmd") in ("evalsha", "eval")]


class Killer:
    """Kills every script connection of ``servers`` every ``interval`` seconds."""

    def __init__(self, servers: list[RedisServer], interval: float) -> None:
        self.servers = servers
        self.interval = interval
        self.kills = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        admins = [server.client() for server in self.servers]
        try:
            while not self._stop.wait(self.interval):
                for admin in admins:
                    for client_id in _script_connections(admin):
                        self.kills += int(admin.client_kill_filter(_id=client_id))
        finally:
            for admin in admins:
                admin.close()

    def __enter__(self) -> Killer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _hit(i: int) -> Hit:
    return Hit(f"ratemw:{{kill-{i}}}:/r:fw", 10, 3_600_000, 1, "fixed-window")


def _counts(server: Any, calls: int) -> list[int]:
    client = server.client()
    try:
        pipe = client.pipeline(transaction=False)
        for i in range(calls):
            pipe.hget(_hit(i).key, "c")
        return [int(c) if c is not None else 0 for c in pipe.execute()]
    finally:
        client.close()


def _sync_calls(url: str, calls: int) -> list[bool]:
    storage = RedisStorage(url, **TEST_OPTIONS)
    admitted = []
    try:
        for i in range(calls):
            try:
                admitted.append(storage.acquire([_hit(i)])[0].fits)
            except StorageError:
                admitted.append(False)
    finally:
        storage.close()
    return admitted


async def _async_calls(url: str, calls: int) -> list[bool]:
    storage = AsyncRedisStorage(url, **TEST_OPTIONS)
    admitted: list[bool] = []

    async def one(i: int) -> bool:
        try:
            return (await storage.acquire([_hit(i)]))[0].fits
        except StorageError:
            return False

    try:
        for start in range(0, calls, BATCH):
            batch = range(start, min(start + BATCH, calls))
            admitted += await asyncio.gather(*(one(i) for i in batch))
    finally:
        await storage.aclose()
    return admitted


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("backend", list(SERVERS))
def test_killed_connections_never_count_a_call_twice(
    request: pytest.FixtureRequest, backend: str, asynchronous: bool
) -> None:
    server = request.getfixturevalue(SERVERS[backend])
    nodes = {"cluster": lambda: server.nodes, "sentinel": lambda: [server.master]}.get(
        backend, lambda: [server]
    )()
    calls = CALLS[backend]
    url = server.url + QUERIES.get(backend, "")
    started = time.monotonic()
    with Killer(nodes, KILL_EVERY) as killer:
        if asynchronous:
            admitted = asyncio.run(_async_calls(url, calls))
        else:
            admitted = _sync_calls(url, calls)
    took = time.monotonic() - started
    counts = _counts(server, calls)
    print(
        f"\n{backend}: {calls} calls in {took:.2f} s, {killer.kills} connections killed, "
        f"{admitted.count(False)} calls failed, {counts.count(0)} not counted"
    )
    twice = [i for i, count in enumerate(counts) if count > 1]
    assert twice == [], f"{len(twice)} of {calls} calls counted twice ({killer.kills} kills)"
    # Every admitted call was counted, once.
    assert all(counts[i] == 1 for i, fits in enumerate(admitted) if fits)
    # The kills did land among the calls (or the test proves nothing): some calls failed.
    assert killer.kills >= 5 and admitted.count(False) >= 1, (killer.kills, took)


def test_a_connection_the_server_closed_while_idle_is_replaced_before_writing(
    redis_server_private: RedisServer,
) -> None:
    # Killed while idle, the connection's end of stream is waiting to be read: the next call
    # sees it before writing and opens a new connection, so it neither fails nor is resent.
    server = redis_server_private

    async def twice_async(hits: list[Hit]) -> list[Any]:
        storage = AsyncRedisStorage(server.url, **TEST_OPTIONS)
        try:
            first = await storage.acquire(hits)
            _kill_all(server)
            return [first, await storage.acquire(hits)]
        finally:
            await storage.aclose()

    sync = RedisStorage(server.url, **TEST_OPTIONS)
    try:
        hits = [_hit(0)]
        assert sync.acquire(hits)[0].remaining == 9
        _kill_all(server)
        assert sync.acquire(hits)[0].remaining == 8
        answers = asyncio.run(twice_async(hits))
        assert [a[0].remaining for a in answers] == [7, 6]
    finally:
        sync.close()
    assert _counts(server, 1)[0] == 4


def _kill_all(server: RedisServer) -> None:
    with server.client() as admin:
        killed = [admin.client_kill_filter(_id=i) for i in _script_connections(admin)]
        assert sum(killed) >= 1
    time.sleep(0.05)  # the end of stream reaches the client's socket
