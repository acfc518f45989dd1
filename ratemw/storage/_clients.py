"""redis-py's clients for a storage URI: the Cluster and Sentinel script lanes, and the
administrative commands (``clear``, ``reset``) of every kind of server."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from ratemw.storage._redis_config import RedisConfig


def _retry(asynchronous: bool, retries: int = 1) -> Any:
    # Retries of a lost connection, for the administrative commands (DEL, SCAN: harmless to
    # send twice). Never on a timeout.
    cls = redis.asyncio.retry.Retry if asynchronous else Retry
    return cls(NoBackoff(), retries, supported_errors=(redis.ConnectionError,))


def _connection_options(config: RedisConfig, asynchronous: bool) -> dict[str, Any]:
    options = config.client_options()
    # Scripts go through redis-py only on Cluster (``_cluster.py``, on connections that never
    # retry) and Sentinel, where a retry could send again a script that ran. redis-py 8 also
    # retries a Sentinel connection on the address it had, the demoted master's: the storage
    # retries itself instead, and only what cannot have run (``_not_sent``). On a Cluster the
    # client's own retries (sleeps included) serve only ``clear`` and ``reset``: none.
    options["retry"] = _retry(asynchronous, 1 if config.kind in ("single", "unix") else 0)
    if config.tls:
        options["ssl"] = True
    return options


def build_client(config: RedisConfig, *, asynchronous: bool) -> tuple[Any, list[Any]]:
    """A redis-py client (sync or async) and the extra clients to close with it."""
    options = _connection_options(config, asynchronous)
    aio: Any = redis.asyncio if asynchronous else redis
    if config.kind in ("single", "unix"):
        if config.kind == "unix":
            options["path"] = config.path
            options.pop("ssl", None)
            pool = aio.ConnectionPool(connection_class=aio.UnixDomainSocketConnection, **options)
        else:
            host, port = config.hosts[0]
            ssl = options.pop("ssl", False)
            connection_class = aio.SSLConnection if ssl else aio.Connection
            pool = aio.ConnectionPool(
                host=host, port=port, connection_class=connection_class, **options
            )
        # from_pool: the client owns the pool and disconnects it when closed.
        return aio.Redis.from_pool(pool), []
    if config.kind == "cluster":
        options.pop("db", None)
        cluster: Any = redis.asyncio.cluster if asynchronous else redis.cluster
        nodes = [cluster.ClusterNode(host, port) for host, port in config.hosts]
        return cluster.RedisCluster(startup_nodes=nodes, **options), []
    sentinel_options = {
        "socket_timeout": options["socket_timeout"],
        "socket_connect_timeout": options["socket_connect_timeout"],
        "retry": _retry(asynchronous),
    }
    # As in ``limits``: the URI's credentials serve the Sentinels too, unless given apart.
    for ours, theirs in (("sentinel_username", "username"), ("sentinel_password", "password")):
        value = config.options.get(ours, config.options.get(theirs))
        if value is not None:
            sentinel_options[theirs] = value
    sentinel_class = redis.asyncio.sentinel.Sentinel if asynchronous else redis.sentinel.Sentinel
    sentinel = sentinel_class(config.hosts, sentinel_kwargs=sentinel_options)
    return sentinel.master_for(config.path, **options), list(sentinel.sentinels)
