"""The ``"redis-py"`` transport: script calls through redis-py's client.

The reference transport: it serves every kind of deployment, a Sentinel-managed master and a
single server here, a Cluster in ``cluster.py`` (which sends each call to its slot's node
itself). Each call carries a token its reply must end with, as on ratemw's own connections
(``endpoint.py``): a reply that is not the call's means the client's connections are out of
step; they are all closed, and the call fails (``redis.ConnectionError``).

A call is sent again only when it cannot have run: no connection could be made, or a
Sentinel-managed connection met a demoted master (``READONLY``: the script was refused before
it wrote anything) and asks the Sentinels again for the new one. redis-py's own retries are
off on this client (``clients.py``): they would send again a script that may have run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

from ratemw.storage.redis.clients import AsyncClient, Client
from ratemw.storage.redis.pool import UNHEALTHY, AsyncSlots
from ratemw.storage.redis.resp import answers, new_tokens

__all__ = ["OUT_OF_STEP", "AsyncRedisPyScripts", "RedisPyScripts", "not_sent"]

OUT_OF_STEP = "Protocol error: Redis answered with a reply that is not the call's"


def not_sent(exc: redis.ConnectionError) -> bool:
    """Whether a redis-py command failed before it could run: safe to send again.

    Either no connection could be made, or a Sentinel-managed connection met a demoted
    master (``READONLY``: the script was refused before it wrote anything).
    """
    text = str(exc)
    return "connecting to" in text or "previous master is now a slave" in text


class RedisPyScripts:
    """Script calls through a sync redis-py client (a ``ScriptTransport``).

    Args:
        client: the storage's redis-py client, built on first use.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._tokens = new_tokens()

    def script(
        self,
        sha: str,
        text: str,
        keys: Sequence[str],
        args: Sequence[str],
        packed: bytes | None = None,
    ) -> Any:
        """``transport.ScriptTransport.script`` (``packed`` is not used)."""
        token = next(self._tokens)
        reply = self._send(self._client.get(), sha, text, keys, [*args, token])
        if not answers(reply, token):  # out of step: no connection of this client is trusted
            self.disconnect()
            raise redis.ConnectionError(OUT_OF_STEP)
        return reply

    def _send(
        self, client: Any, sha: str, text: str, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        for attempt in (1, 2):
            try:
                try:
                    return client.evalsha(sha, len(keys), *keys, *args)
                except NoScriptError:  # after a restart or SCRIPT FLUSH: EVAL loads it
                    return client.eval(text, len(keys), *keys, *args)
            except redis.ConnectionError as exc:
                if attempt == 2 or not not_sent(exc):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def disconnect(self) -> None:
        """Close every connection of the client (one of them went out of step)."""
        self._client.get().connection_pool.disconnect()

    def close(self) -> None:
        """Nothing of its own to close: the storage closes the client."""


class AsyncRedisPyScripts:
    """Script calls through an async redis-py client (an ``AsyncScriptTransport``).

    At most ``max_connections`` calls are in flight (``pool.AsyncSlots``): redis-py's pool
    holds a connection per call.

    Args:
        client: the storage's redis-py client.
        max_connections: the calls in flight at most.
        pool_timeout: how long a call waits for a free connection (seconds).
    """

    def __init__(self, client: AsyncClient, max_connections: int, pool_timeout: float) -> None:
        self._client = client
        self._slots = AsyncSlots(max_connections)
        self._pool_timeout = pool_timeout
        self._tokens = new_tokens()

    async def script(
        self,
        sha: str,
        text: str,
        keys: Sequence[str],
        args: Sequence[str],
        packed: bytes | None = None,
    ) -> Any:
        """``transport.ScriptTransport.script`` (``packed`` is not used)."""
        client = await self._client.get()
        slots = self._slots
        failures = slots.failures
        taken = await slots.acquire(self._pool_timeout)  # all busy: wait, but not for ever
        if taken is not True:
            slots.after_wait(taken, failures)
        try:
            token = next(self._tokens)
            reply = await self._send(client, sha, text, keys, [*args, token])
            if not answers(reply, token):  # out of step: no connection is trusted
                await self.disconnect()
                raise redis.ConnectionError(OUT_OF_STEP)
            return reply
        except UNHEALTHY:
            slots.failures += 1
            raise
        finally:
            slots.release()

    async def _send(
        self, client: Any, sha: str, text: str, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        for attempt in (1, 2):
            try:
                try:
                    return await client.evalsha(sha, len(keys), *keys, *args)
                except NoScriptError:  # after a restart or SCRIPT FLUSH: EVAL loads it
                    return await client.eval(text, len(keys), *keys, *args)
            except redis.ConnectionError as exc:
                if attempt == 2 or not not_sent(exc):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def disconnect(self) -> None:
        """Close every connection of the client (one of them went out of step)."""
        await self._client.client.connection_pool.disconnect()

    async def aclose(self) -> None:
        """Nothing of its own to close: the storage closes the client."""
