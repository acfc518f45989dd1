"""Tests of the real-Redis fixtures in ``tests/redis_servers.py``.

They talk to the servers through independent clients, so a broken helper
(wrong port, servers not clustered, replica not attached, failover not
switching, ...) makes them fail.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import redis
import redis.cluster
from limits.storage import storage_from_string
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.redis_servers import (
    HOST,
    RedisCluster,
    RedisSentinel,
    RedisServer,
    find_free_port,
    port_is_free,
    require_redis_binaries,
)

# --------------------------------------------------------------------------
# helpers that need no server
# --------------------------------------------------------------------------


@pytest.mark.parametrize("ci", [None, "", "false", "1", "yes"])
def test_missing_binary_skips_outside_ci(
    ci: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="redis-server not found"):
        require_redis_binaries("redis-server")


@pytest.mark.parametrize("ci", ["true", "TRUE", "True", " true "])
def test_missing_binary_fails_on_ci(
    ci: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=r"redis-cli not found.*CI=true"):
        require_redis_binaries("redis-server", "redis-cli")


def test_binaries_present_neither_skip_nor_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    require_redis_binaries("redis-server", "redis-cli")  # must simply return


def test_find_free_port() -> None:
    port = find_free_port(cluster_bus=True)
    assert port_is_free(port)
    assert port_is_free(port + 10000)
    assert port != find_free_port()  # reserved ports are not handed out twice
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen()
        assert not port_is_free(listener.getsockname()[1])


# --------------------------------------------------------------------------
# standalone
# --------------------------------------------------------------------------


def test_standalone_set_get_and_reads_processed(redis_standalone_clean: RedisServer) -> None:
    server = redis_standalone_clean
    assert server.url == f"redis://127.0.0.1:{server.port}"
    assert server.role() == "master"
    with server.client() as client:
        assert client.ping()
        assert client.ping()  # the connection (handshake) exists from now on
        before = server.reads_processed()
        assert server.reads_processed() == before  # the helper's own INFO is not counted
        assert client.set("greeting", "hello")
        assert client.get("greeting") == "hello"
        assert client.incr("counter") == 1
        assert client.incr("counter") == 2
        assert client.delete("greeting") == 1
        assert server.reads_processed() - before == 5
        # a pipeline is one round trip, i.e. one read
        client.pipeline(transaction=False).incr("counter").incr("counter").execute()
        assert server.reads_processed() - before == 6
    stats = server.info_commandstats()
    assert stats["set"]["calls"] == 1
    assert stats["get"]["calls"] == 1
    assert stats["incrby"]["calls"] == 4  # redis-py sends INCR as INCRBY
    assert stats["del"]["calls"] == 1


def test_standalone_clean_fixture_flushes_and_resets_stats(
    redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    with redis_server.client() as client:
        client.set("left-over", "1")
        assert redis_server.reads_processed() > 0
        clean = request.getfixturevalue("redis_standalone_clean")
        assert clean is redis_server
        assert redis_server.reads_processed() == 0
        assert client.exists("left-over") == 0
        assert client.dbsize() == 0


def _close_limits_storage(storage: object) -> None:
    """Close the redis clients of a ``limits`` storage right away.

    Otherwise they are closed whenever they are garbage-collected, and a
    closing connection counts in the server's ``total_reads_processed``.
    """
    for attribute in ("storage", "storage_slave"):
        client = getattr(storage, attribute, None)
        if client is not None:
            client.close()


def test_standalone_url_works_with_limits(redis_server_private: RedisServer) -> None:
    storage = storage_from_string(redis_server_private.url)
    try:
        assert storage.check()
        assert storage.incr("limits-key", 10) == 1
    finally:
        _close_limits_storage(storage)
    with redis_server_private.client() as client:
        assert client.keys("*limits-key*")


def test_private_server_kill_and_restart(
    redis_server_private: RedisServer, redis_server: RedisServer
) -> None:
    server = redis_server_private
    assert server.port != redis_server.port
    port, pid = server.port, server.pid
    with server.client(retry=Retry(NoBackoff(), 0), socket_connect_timeout=1) as client:
        client.set("volatile", "1")
        server.kill()
        assert not server.is_running()
        assert server.pid is None
        with pytest.raises(redis.ConnectionError):
            client.ping()
        with pytest.raises(redis.ConnectionError):
            client.ping()  # stays down: nothing restarts it behind our back
        server.restart()
        assert server.is_running()
        assert (server.port, server.url) == (port, f"redis://127.0.0.1:{port}")
        assert server.pid != pid
        assert client.ping()  # same client reconnects to the same port
        assert client.get("volatile") is None  # no persistence
        assert server.reads_processed() >= 1
    # graceful stop + start also keeps the port
    server.stop()
    assert not server.is_running()
    server.start()
    with server.client() as client:
        assert client.ping()
    assert server.port == port


def test_private_server_pause(redis_server_private: RedisServer) -> None:
    with redis_server_private.client() as client:
        client.ping()
        redis_server_private.pause(0.3)
        started = time.monotonic()
        assert client.set("after-pause", "1")
        assert time.monotonic() - started >= 0.25
        # a WRITE pause blocks writes only and can be ended early (Redis
        # itself blocks CLIENT UNPAUSE while an ALL pause is running)
        redis_server_private.pause(30, mode="WRITE")
        assert client.get("after-pause") == "1"
        redis_server_private.unpause()
        started = time.monotonic()
        assert client.set("after-unpause", "1")
        assert time.monotonic() - started < 5


# --------------------------------------------------------------------------
# cluster
# --------------------------------------------------------------------------


def _keys_on_three_nodes(cluster: RedisCluster, prefix: str = "key") -> dict[str, RedisServer]:
    """Pick keys until every node owns at least one of them."""
    owners = cluster.slot_owners()
    chosen: dict[str, RedisServer] = {}
    for index in range(1000):
        key = f"{prefix}-{index}"
        owner = owners[cluster.keyslot(key)]
        if owner not in chosen.values():
            chosen[key] = owner
        if len(chosen) == len(cluster.nodes):
            return chosen
    raise AssertionError("keys do not spread over the cluster nodes")


def test_cluster_topology(redis_cluster_clean: RedisCluster) -> None:
    cluster = redis_cluster_clean
    ports = [node.port for node in cluster.nodes]
    assert len(set(ports)) == 3
    assert cluster.url == "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    for node in cluster.nodes:
        with node.client() as plain:
            info = plain.cluster("INFO")
            assert info["cluster_state"] == "ok"
            assert int(info["cluster_known_nodes"]) == 3
            assert int(info["cluster_size"]) == 3  # three masters serving slots
            assert plain.execute_command("ROLE")[0] == "master"
    owners = set(cluster.slot_owners().values())
    assert owners == set(cluster.nodes)


def test_cluster_keys_spread_over_nodes(redis_cluster_clean: RedisCluster) -> None:
    cluster = redis_cluster_clean
    keys = _keys_on_three_nodes(cluster)
    with cluster.client() as client:
        for key in keys:
            assert client.set(key, key.upper())
        for key in keys:
            assert client.get(key) == key.upper()
        # second round: connections to all three nodes exist now
        before = cluster.reads_processed()
        for key in keys:
            client.set(key, key)
        assert cluster.reads_processed() - before == 3
    slots = set()
    for key, expected_node in keys.items():
        with expected_node.client() as plain:
            # the server agrees with our slot computation ...
            slot = int(plain.execute_command("CLUSTER", "KEYSLOT", key))
            assert slot == cluster.keyslot(key)
            slots.add(slot)
            # ... and the key physically lives on the owning node only
            assert plain.keys("*") == [key]
    assert len(slots) == 3
    assert {cluster.node_for_key(key).port for key in keys} == {n.port for n in cluster.nodes}
    # asking a node that does not own the slot gives a redirection
    key, owner = next(iter(keys.items()))
    other = next(node for node in cluster.nodes if node is not owner)
    with other.client() as plain, pytest.raises(redis.exceptions.MovedError) as moved:
        plain.get(key)
    assert str(moved.value) == f"{cluster.keyslot(key)} 127.0.0.1:{owner.port}"


def test_cluster_hash_tags_share_a_slot(redis_cluster_clean: RedisCluster) -> None:
    cluster = redis_cluster_clean
    tagged = ["{user:42}:minute", "{user:42}:hour", "{user:42}:day"]
    slots = {cluster.keyslot(key) for key in tagged}
    assert len(slots) == 1
    with cluster.nodes[0].client() as plain:
        assert {int(plain.execute_command("CLUSTER", "KEYSLOT", k)) for k in tagged} == slots
    with cluster.client() as client:
        # a multi-key command only works because all keys share one slot
        assert client.execute_command("MSET", *(x for k in tagged for x in (k, "1")))
        assert client.execute_command("MGET", *tagged) == ["1", "1", "1"]
    owner = cluster.node_for_key(tagged[0])
    with owner.client() as plain:
        assert sorted(plain.keys("*")) == sorted(tagged)
        # the server itself refuses keys of different slots in one command
        untagged = list(_keys_on_three_nodes(cluster))
        with pytest.raises(redis.ResponseError, match="hash to the same slot"):
            plain.execute_command("MSET", *(x for k in untagged for x in (k, "1")))


def test_cluster_clean_fixture_flushes_every_node(
    redis_cluster: RedisCluster, request: pytest.FixtureRequest
) -> None:
    def dbsizes() -> list[int]:
        sizes = []
        for node in redis_cluster.nodes:
            with node.client() as plain:
                sizes.append(plain.dbsize())
        return sizes

    before = dbsizes()
    with redis_cluster.client() as client:
        for key in _keys_on_three_nodes(redis_cluster, prefix="left-over"):
            client.set(key, "1")
    assert sum(dbsizes()) == sum(before) + 3
    assert all(size > 0 for size in dbsizes())
    request.getfixturevalue("redis_cluster_clean")
    assert dbsizes() == [0, 0, 0]


def test_cluster_url_works_with_limits(redis_cluster_clean: RedisCluster) -> None:
    storage = storage_from_string(redis_cluster_clean.url)
    try:
        assert storage.check()
        assert storage.incr("limits-key", 10) == 1
        assert storage.incr("limits-key", 10) == 2
    finally:
        _close_limits_storage(storage)
    owner = redis_cluster_clean.node_for_key("LIMITS:limits-key")
    with owner.client() as plain:
        assert plain.get("LIMITS:limits-key") == "2"


# --------------------------------------------------------------------------
# sentinel
# --------------------------------------------------------------------------


def _wait_for_replica(master: RedisServer) -> None:
    with master.client() as client:
        assert client.execute_command("WAIT", 1, 5000) == 1


def test_sentinel_replication_and_failover(redis_sentinel_clean: RedisSentinel) -> None:
    setup = redis_sentinel_clean
    assert setup.service_name == "mymaster"
    assert setup.url == f"redis+sentinel://127.0.0.1:{setup.sentinel.port}/mymaster"
    old_master, old_replica = setup.master, setup.replica
    assert old_master is not old_replica
    assert {old_master, old_replica} == set(setup.servers)
    assert old_master.role() == "master"
    assert old_replica.role() == "slave"
    assert setup.sentinel.role() == "sentinel"

    client = setup.client(retry=Retry(NoBackoff(), 3))
    try:
        assert client.set("before", "1")
        _wait_for_replica(old_master)
        with old_replica.client() as replica_client:
            assert replica_client.get("before") == "1"
            with pytest.raises(redis.ReadOnlyError):
                replica_client.set("nope", "1")

        new_master = setup.failover()

        assert new_master is old_replica
        assert setup.master is old_replica
        assert setup.replica is old_master
        assert setup.master_address() == (HOST, old_replica.port)
        assert new_master.role() == "master"
        assert old_master.role() == "slave"
        # a client created now talks to the new master right away
        with setup.client() as fresh:
            assert fresh.set("after", "2")
            assert fresh.get("before") == "1"
        # a client from before the failover follows it too, but redis-py (up to
        # 8.1 at least, redis/redis-py#3874) reconnects its pooled connection to
        # the *old* address on retry, so its first command may fail with
        # "The previous master is now a slave"; the next one asks the sentinel
        try:
            client.set("after-old-client", "3")
        except redis.ConnectionError:
            client.set("after-old-client", "3")
        assert client.get("after") == "2"
        _wait_for_replica(new_master)
        with old_master.client() as demoted:
            assert demoted.get("after") == "2"
            with pytest.raises(redis.ReadOnlyError):
                demoted.set("nope", "1")
        with new_master.client() as promoted:
            assert promoted.get("after") == "2"
    finally:
        client.close()


def test_sentinel_clean_fixture_uses_current_master(
    redis_sentinel: RedisSentinel, request: pytest.FixtureRequest
) -> None:
    # usually runs after the failover test: the *new* master must be flushed
    with redis_sentinel.client() as client:
        client.set("left-over", "1")
        _wait_for_replica(redis_sentinel.master)
        assert redis_sentinel.reads_processed() > 0
        request.getfixturevalue("redis_sentinel_clean")
        assert client.dbsize() == 0
    with redis_sentinel.replica.client() as replica_client:
        assert replica_client.dbsize() == 0


def test_sentinel_url_works_with_limits(redis_sentinel_clean: RedisSentinel) -> None:
    storage = storage_from_string(redis_sentinel_clean.url)
    try:
        assert storage.check()
        assert storage.incr("limits-key", 10) == 1
    finally:
        _close_limits_storage(storage)
    with redis_sentinel_clean.master.client() as client:
        assert client.keys("*limits-key*")
