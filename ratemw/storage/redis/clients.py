"""redis-py's clients for a storage URI: the ``"redis-py"`` transport's (every Cluster and
Sentinel, and a single server when asked), and the administrative commands' (``clear``,
``reset``, ``exists``, the reset mark) of every kind of server.

``Client`` (sync) builds its client on first use: a cluster client connects when built.
``AsyncClient`` builds its client at once (nothing connects until a command is sent) and
initialises a cluster client once, under a lock, before any command is sent on it.
"""

from __future__ import annotations

import asyncio
import threading
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

from ratemw.storage.redis.config import RedisConfig

__all__ = ["AsyncClient", "Client", "build_client"]


def _retry(asynchronous: bool, retries: int = 1) -> Any:
    # Retries of a lost connection, for the administrative commands (DEL, SCAN: harmless to
    # send twice). Never on a timeout.
    cls = redis.asyncio.retry.Retry if asynchronous else Retry
    return cls(NoBackoff(), retries, supported_errors=(redis.ConnectionError,))


def _connection_options(config: RedisConfig, asynchronous: bool) -> dict[str, Any]:
    options = config.client_options()
    # Where scripts go through this client (the "redis-py" transport: Cluster, on connections
    # that never retry; Sentinel; a single server when asked), a retry could send again a
    # script that ran. redis-py 8 also retries a Sentinel connection on the address it had,
    # the demoted master's: the transport retries itself instead, and only what cannot have
    # run (``transport.not_sent``). On a Cluster the client's own retries (sleeps included)
    # serve only the administrative commands: none.
    scripts_here = config.transport == "redis-py"
    options["retry"] = _retry(asynchronous, 0 if scripts_here else 1)
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


class Client:
    """A sync storage's redis-py client, built on first use (threads may share it)."""

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self._client: Any = None
        self._closers: list[Any] = []
        self._lock = threading.Lock()

    def get(self) -> Any:
        """The client (a cluster client connects when built)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client, self._closers = build_client(self.config, asynchronous=False)
        return self._client

    def close(self) -> None:
        """Close its connections (the Sentinel ones included); the next use builds it again."""
        client, closers = self._client, self._closers
        self._client, self._closers = None, []
        for each in (client, *closers):
            if each is not None:
                each.close()


class AsyncClient:
    """An async storage's redis-py client (one event loop at a time)."""

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.client, self._closers = build_client(config, asynchronous=True)
        self._ready = config.kind != "cluster"
        self._init_lock: asyncio.Lock | None = None
        self._init_attempts = 0
        self._init_error: BaseException | None = None

    async def get(self) -> Any:
        """The client, ready for commands (a cluster client initialised)."""
        if not self._ready:
            await self._initialise()
        return self.client

    async def _initialise(self) -> None:
        # redis-py's async cluster client is not safe to share half-initialised: many first
        # requests at once must wait for one initialisation. Those that queued behind a
        # failed one fail with it rather than each paying the timeout again.
        if self._init_lock is None:
            self._init_lock = asyncio.Lock()
        attempts = self._init_attempts
        async with self._init_lock:
            if self._ready:
                return
            if self._init_attempts != attempts and self._init_error is not None:
                raise self._init_error
            self._init_attempts += 1
            try:
                await self.client.initialize()
            except BaseException as exc:
                self._init_error = exc
                raise
            self._init_error = None
            self._ready = True

    async def aclose(self) -> None:
        """Close its connections (the Sentinel ones included); it may be used again."""
        for each in (self.client, *self._closers):
            await each.aclose()
        self._closers = []
        self._ready = self.config.kind != "cluster"
