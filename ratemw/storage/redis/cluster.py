"""The ``"redis-py"`` transport on a Redis Cluster: each script call goes straight to the node
that owns its slot, waits bounded.

redis-py's cluster client, left to itself, makes a failing request wait and may count it
twice: on ``CLUSTERDOWN`` it sleeps 0.25 s and reloads the topology before failing (and again
for each of its retries), it sleeps 50 ms between ``TRYAGAIN``s, follows up to 16
redirections, and after a lost connection or a timeout sends the command again, when it
may already have run. So the storage sends each script call itself, through the cluster
client's topology and node clients (whose connections never retry):

- ``MOVED``: the slot map is patched and the call goes to the new owner; ``ASK``: it goes to
  the importing node after ``ASKING``, on one connection. The node that redirected did not
  run the script, so sending it on is safe. At most ``REDIRECTIONS`` per call.
- Anything else fails the call at once, nothing is sent twice: ``CLUSTERDOWN``, ``TRYAGAIN``,
  a lost connection, a timeout. After a lost connection, a timeout or ``CLUSTERDOWN`` the
  slot map is reloaded (a failover may have moved the slots) in the background, one reload
  at a time: no request waits for it; requests go on with the map they have meanwhile.

The administrative commands (``clear``, ``reset``, ...) still go through redis-py's cluster
client, built with no retries. Replies are matched to calls by token, as in ``redispy.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from typing import Any

import redis
from redis.asyncio.cluster import PipelineCommand
from redis.exceptions import AskError, ClusterDownError, ClusterError, MovedError, NoScriptError

from ratemw.storage.redis.clients import AsyncClient, Client
from ratemw.storage.redis.redispy import AsyncRedisPyScripts, RedisPyScripts

__all__ = ["REDIRECTIONS", "AsyncClusterScripts", "ClusterScripts"]

REDIRECTIONS = 2

# After these the slot map may be out of date: the next call reloads it.
_STALE = (redis.ConnectionError, redis.TimeoutError, ClusterDownError)


def _commands(
    script: tuple[str, str], keys: Sequence[str], args: Sequence[Any]
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """A call's ``EVALSHA``, and the ``EVAL`` that loads the script where a node lost it."""
    sha, text = script
    return ("EVALSHA", sha, len(keys), *keys, *args), ("EVAL", text, len(keys), *keys, *args)


def _redirected(keys: Sequence[str]) -> ClusterError:
    return ClusterError(
        f"the slot of {keys[0]!r} was redirected more than {REDIRECTIONS} times "
        "(MOVED/ASK): the cluster is resharding or its map keeps changing"
    )


class ClusterScripts(RedisPyScripts):
    """Script calls over a ``redis.cluster.RedisCluster``'s nodes (threads may share it)."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.refreshes = 0  # slot maps reloaded so far
        self._refreshing = threading.Lock()
        self._refresher: threading.Thread | None = None

    def _send(
        self, client: Any, sha: str, text: str, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """``EVALSHA`` (``EVAL`` if the node lost the script) on the node owning the keys."""
        slot = client.keyslot(keys[0])
        node = client.nodes_manager.get_node_from_slot(slot)
        asking = False
        try:
            for _ in range(REDIRECTIONS + 1):
                try:
                    return self._on_node(client, node, (sha, text), keys, args, asking)
                except MovedError as exc:
                    client.nodes_manager.move_slot(exc)
                    node, asking = client.nodes_manager.get_node_from_slot(slot), False
                except AskError as exc:
                    node, asking = client.get_node(host=exc.host, port=exc.port), True
                    if node is None:
                        raise
        except _STALE:
            self.reload()
            raise
        raise _redirected(keys)

    def _on_node(
        self,
        client: Any,
        node: Any,
        script: tuple[str, str],
        keys: Sequence[str],
        args: Sequence[Any],
        asking: bool,
    ) -> Any:
        redis_node = client.get_redis_connection(node)
        command, loading = _commands(script, keys, args)
        if not asking:
            try:
                return redis_node.execute_command(*command)
            except NoScriptError:  # a restarted node, SCRIPT FLUSH: EVAL loads it
                return redis_node.execute_command(*loading)
        for each in (command, loading):
            pipe = redis_node.pipeline(transaction=False)  # one connection, one write
            pipe.execute_command("ASKING")
            pipe.execute_command(*each)
            reply = pipe.execute(raise_on_error=False)[1]
            if not isinstance(reply, NoScriptError):
                break
        if isinstance(reply, Exception):
            raise reply
        return reply

    def disconnect(self) -> None:
        """Close every node connection (one of them went out of step)."""
        for node in self._client.get().get_nodes():
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()

    def reload(self) -> None:
        """Reload the slot map in a thread of its own (unless a reload is under way)."""
        if not self._refreshing.acquire(blocking=False):
            return
        self._refresher = threading.Thread(
            target=self._reload, name="ratemw-cluster-map", daemon=True
        )
        self._refresher.start()

    def _reload(self) -> None:
        try:
            self._client.get().nodes_manager.initialize()
            self.refreshes += 1
        except Exception:  # the next failing call asks for another reload
            pass
        finally:
            self._refreshing.release()

    def close(self) -> None:
        """Wait for a reload under way (it is bounded by the connection timeouts)."""
        refresher = self._refresher
        if refresher is not None:
            refresher.join()


class AsyncClusterScripts(AsyncRedisPyScripts):
    """Script calls over a ``redis.asyncio.cluster.RedisCluster``'s nodes (one event loop)."""

    def __init__(self, client: AsyncClient, max_connections: int, pool_timeout: float) -> None:
        super().__init__(client, max_connections, pool_timeout)
        self.refreshes = 0  # slot maps reloaded so far
        self._refresher: asyncio.Task[None] | None = None

    async def _send(
        self, client: Any, sha: str, text: str, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """``EVALSHA`` (``EVAL`` if the node lost the script) on the node owning the keys."""
        slot = client.keyslot(keys[0])
        node = client.nodes_manager.get_node_from_slot(slot)
        asking = False
        try:
            for _ in range(REDIRECTIONS + 1):
                try:
                    return await self._on_node(node, (sha, text), keys, args, asking)
                except MovedError as exc:
                    await client.nodes_manager.move_slot(exc)
                    node, asking = client.nodes_manager.get_node_from_slot(slot), False
                except AskError as exc:
                    node, asking = client.get_node(host=exc.host, port=exc.port), True
                    if node is None:
                        raise
        except _STALE:
            self.reload()
            raise
        raise _redirected(keys)

    async def _on_node(
        self,
        node: Any,
        script: tuple[str, str],
        keys: Sequence[str],
        args: Sequence[Any],
        asking: bool,
    ) -> Any:
        command, loading = _commands(script, keys, args)
        if not asking:
            try:
                return await _execute(node, command)
            except NoScriptError:  # a restarted node, SCRIPT FLUSH: EVAL loads it
                return await _execute(node, loading)
        for each in (command, loading):
            # ASKING and the script on one connection, in one write.
            calls = [PipelineCommand(0, "ASKING"), PipelineCommand(1, *each)]
            await node.execute_pipeline(calls)
            reply = calls[1].result
            if not isinstance(reply, NoScriptError):
                break
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def disconnect(self) -> None:
        """Close every node connection (one of them went out of step)."""
        for node in self._client.client.get_nodes():
            await node.disconnect()

    def reload(self) -> None:
        """Reload the slot map in a task of its own (unless a reload is under way)."""
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._reload())

    async def _reload(self) -> None:
        try:
            await self._client.client.nodes_manager.initialize()
            self.refreshes += 1
        except Exception:  # the next failing call asks for another reload
            pass

    async def aclose(self) -> None:
        """Stop a reload under way."""
        refresher, self._refresher = self._refresher, None
        if refresher is not None and not refresher.done():
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher


async def _execute(node: Any, command: tuple[Any, ...]) -> Any:
    """``command`` on one of ``node``'s connections, looked at first if it was idle.

    redis-py's async cluster nodes hand out a pooled connection as it is; one the server
    closed meanwhile (a restart, ``CLIENT KILL``, an idle ``timeout``) would take the
    command and then fail, and it must not be sent again (it may have run). So a connection
    that has anything to read before anything was sent on it (the end of the stream, or bytes
    nobody asked for) is closed first: it reconnects when the command is written.
    """
    connection = node.acquire_connection()
    try:
        await node.disconnect_if_needed(connection)
        if connection.is_connected:
            try:
                stale = await connection.can_read()
            except (redis.ConnectionError, OSError):
                stale = True
            if stale:
                await connection.disconnect()
        await connection.send_packed_command(connection.pack_command(*command))
        return await connection.read_response()
    finally:
        node.release(connection)
