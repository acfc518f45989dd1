"""``check()``: a start-up check that connects, runs the script once and counts nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ratemw import StorageError
from ratemw.storage import AsyncMemoryStorage, MemoryStorage
from ratemw.storage.redis import SCRIPT_SHA, AsyncRedisStorage, RedisStorage
from tests.redis_servers import find_free_port


def run_check(asynchronous: bool, uri: str, **options: Any) -> None:
    if not asynchronous:
        storage = RedisStorage(uri, **options)
        try:
            storage.check()
        finally:
            storage.close()
        return

    async def main() -> None:
        storage = AsyncRedisStorage(uri, **options)
        try:
            await storage.check()
        finally:
            await storage.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("fixture", "query"),
    [
        pytest.param("redis_standalone_clean", "", id="redis"),
        pytest.param("redis_standalone_clean", "?transport=redis-py", id="redis-via-redis-py"),
        pytest.param("redis_cluster_clean", "", id="cluster"),
        pytest.param("redis_sentinel_clean", "", id="sentinel"),
    ],
)
def test_a_live_storage_passes_and_nothing_is_counted(
    request: pytest.FixtureRequest, fixture: str, query: str, asynchronous: bool
) -> None:
    server = request.getfixturevalue(fixture)
    clients = (
        [server.client()]
        if fixture != "redis_cluster_clean"
        else [node.client() for node in server.nodes]
    )
    try:
        for client in clients:
            client.script_flush()
        run_check(asynchronous, server.url + query)
        # The script ran (it is loaded now, somewhere), and wrote nothing anywhere.
        assert any(client.script_exists(SCRIPT_SHA) == [True] for client in clients)
        assert all(client.dbsize() == 0 for client in clients)
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_closed_port_fails_naming_the_uri_and_the_reason_not_the_password(
    asynchronous: bool,
) -> None:
    port = find_free_port()
    with pytest.raises(StorageError) as caught:
        run_check(asynchronous, f"redis://alice:s3cret@127.0.0.1:{port}/0")
    message = str(caught.value)
    assert f"redis://127.0.0.1:{port}" in message
    assert "refused" in message.lower() or "connecting" in message.lower(), message
    assert "s3cret" not in message and "s3cret" not in repr(caught.value.__cause__)
    assert caught.value.__cause__ is not None


def test_the_memory_storages_are_always_ready() -> None:
    memory = MemoryStorage()
    assert memory.check() is None
    assert asyncio.run(AsyncMemoryStorage(memory).check()) is None
    assert len(memory) == 0
