"""The one seam between a Redis storage and the wire: how its script calls reach Redis.

A transport sends one call of a script (``EVALSHA``; ``EVAL`` when the server lost the
script) with its keys and arguments, adds the call's token as its last argument, and returns
the reply once it has checked that the reply is that call's (it ends with the token): a
reply that is not the call's closes the connection(s) it came on and raises
``redis.ConnectionError``; an error reply is raised as redis-py raises it. A call is never
sent twice once it may have run. Failures are redis-py's exceptions, whatever the transport.

Two implementations, chosen once, when the storage is built (``script_transport`` and
``async_script_transport``), by the ``transport`` storage option:

- ``"redis-py"``, the reference: redis-py's client (``redispy.py``; ``cluster.py`` sends each
  call of a Cluster to its slot's node). The only one that serves Cluster and Sentinel.
- ``"pipe"``, the default for a single server (TCP, TLS, Unix socket): ratemw's own
  connections, about half a redis-py round trip (``pipe.py``: blocking, for WSGI;
  ``apipe.py``: one pipelined connection per event loop, for ASGI).

Both are held to one contract: ``tests/storage/test_storage_contract.py`` runs against each.
The administrative commands (``clear``, ``reset``, ``exists``) are not scripts: they go
through redis-py's client whatever the transport.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ratemw.storage.redis.apipe import AsyncPipe
from ratemw.storage.redis.clients import AsyncClient, Client
from ratemw.storage.redis.cluster import AsyncClusterScripts, ClusterScripts
from ratemw.storage.redis.config import RedisConfig
from ratemw.storage.redis.pipe import Pipe
from ratemw.storage.redis.redispy import AsyncRedisPyScripts, RedisPyScripts

__all__ = [
    "AsyncScriptTransport",
    "ScriptTransport",
    "async_script_transport",
    "script_transport",
]


class ScriptTransport(Protocol):
    """How a sync storage's script calls reach Redis."""

    def script(
        self,
        sha: str,
        text: str,
        keys: Sequence[str],
        args: Sequence[str],
        packed: bytes | None = None,
    ) -> Any:
        """Call the script ``sha`` (``text``, if the server lost it) with ``keys`` and ``args``
        and return its reply, which ended with the call's token (added here).

        ``packed``: the call's ``EVALSHA`` packed earlier (``resp.evalsha_command``) and kept
        by the caller, which a transport may send as it is.
        """
        ...

    def close(self) -> None:
        """Close the connections this transport holds of its own."""
        ...


class AsyncScriptTransport(Protocol):
    """How an async storage's script calls reach Redis: ``ScriptTransport``'s, awaited."""

    async def script(
        self,
        sha: str,
        text: str,
        keys: Sequence[str],
        args: Sequence[str],
        packed: bytes | None = None,
    ) -> Any: ...

    async def aclose(self) -> None: ...


def script_transport(config: RedisConfig, client: Client) -> ScriptTransport:
    """The sync storage's transport for ``config`` (``client``: its redis-py client)."""
    if config.transport == "pipe":
        return Pipe(config.address, config.options, config.tls)
    if config.kind == "cluster":
        return ClusterScripts(client)
    return RedisPyScripts(client)


def async_script_transport(config: RedisConfig, client: AsyncClient) -> AsyncScriptTransport:
    """The async storage's transport for ``config`` (``client``: its redis-py client)."""
    if config.transport == "pipe":
        return AsyncPipe(config.address, config.options, config.tls)
    options = config.options
    bounds = options["max_connections"], options["pool_timeout"]
    if config.kind == "cluster":
        return AsyncClusterScripts(client, *bounds)
    return AsyncRedisPyScripts(client, *bounds)
