"""Redis storage (standalone, TLS, Unix socket, Cluster, Sentinel, Valkey): one round trip.

Every request's hits go to the server in one ``EVALSHA`` of ``acquire.lua``, which checks
them all, consumes them all or none, and returns the numbers for the headers, on the server's
clock. A caller who is refused is remembered locally until the earliest moment one of its
violated limits could change, so a flood from one key costs Redis nothing.

On a Redis Cluster, all of one caller's keys share a hash tag (the hashed identity) and so
one slot. A request whose limits count different identities (say, per user and per address)
spans slots; it then takes one script call per slot, consuming in turn and handing back what
it took if a later slot refuses, so it never over-admits.

A single server (TCP, TLS or Unix socket) gets the scripts over ratemw's own connections:
one pipelined connection per event loop under ASGI (``_pipe.py``), blocking sockets under
WSGI (``_sync_pipe.py``), each about half a redis-py round trip. On a Cluster each script
call goes straight to the node that owns its slot over redis-py's node connections
(``_cluster.py``), so that redis-py's sleeps and retries never make a request wait or count
twice; Sentinel, and every command other than the script, go through redis-py's clients
(``_clients.py``). Every script call carries a token its reply must end with
(``_resp.py``): no call is ever handed another call's reply.

Failures are bounded: every command has a socket timeout (0.1 s by default), and a command is
never sent again once it may have run (it would count the request twice): a connection the
server closed is found out before anything is written on it. At most ``max_connections``
commands are in flight per redis-py pool; a command queued for a free connection is not sent
when one ahead of it failed meanwhile, so no request waits for more than one timeout.

Errors are ``StorageError``s, raised from the backend's: an outage (no answer, a timeout, a
server that says it is unwell: ``LOADING``, ``READONLY``, ``CLUSTERDOWN``, ...), counted by the
limiter's circuit breaker; or ``StorageCallError``s, where the server answered but this one
call was at fault (the script refused its arguments, or the reply does not fit it), which
the breaker does not count.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from ratemw._redact import describe_error
from ratemw.errors import StorageCallError, StorageError
from ratemw.storage._base import Hit, Usage
from ratemw.storage._blocked import BlockedCache
from ratemw.storage._clients import build_client
from ratemw.storage._cluster import AsyncClusterScripts, ClusterScripts
from ratemw.storage._pipe import AsyncPipe
from ratemw.storage._redis_config import (
    DEFAULT_OPTIONS,
    OPTIONS,
    SCHEMES,
    RedisConfig,
    parse,
    validate,
)
from ratemw.storage._redis_script import (
    SCRIPT,
    SCRIPT_SHA,
    STRATEGIES,
    UnfitReply,
    acquire_call,
    any_refused,
    call_fault,
    compose_script,
    describe_hits,
    parse_reply,
    refund_calls,
    script_args,
    serves,
    slot_by_slot,
    slot_groups,
)
from ratemw.storage._resp import answers, new_tokens
from ratemw.storage._slots import UNHEALTHY, FailedAhead, Slots
from ratemw.storage._sync_pipe import Pipe

__all__ = [
    "DEFAULT_OPTIONS",
    "OPTIONS",
    "SCHEMES",
    "SCRIPT",
    "SCRIPT_SHA",
    "STRATEGIES",
    "AsyncRedisStorage",
    "BlockedCache",
    "RedisConfig",
    "RedisStorage",
    "build_client",
    "compose_script",
    "parse",
    "serves",
    "validate",
]

_ERRORS = (RedisError, RedisClusterException)
_FAILURES = (*_ERRORS, UnfitReply)
# clear() and reset() go through redis-py, which may fail to make sense of a reply with a
# ValueError or TypeError of its own: a storage failure all the same.
_ADMIN_FAILURES = (*_ERRORS, ValueError, TypeError)
_OUT_OF_STEP = "Protocol error: Redis answered with a reply that is not the call's"


def _storage_error(
    config: RedisConfig, exc: BaseException, hits: Sequence[Hit] = ()
) -> StorageError:
    """The ``StorageError`` for a backend's error: a ``StorageCallError`` when the server
    answered but this call was at fault (its message then says what was sent)."""
    error: StorageError
    if isinstance(exc, UnfitReply):
        error = StorageCallError(
            f"Redis storage {config.safe_uri} answered with a reply that does not fit the "
            f"call ({exc}); sent {describe_hits(hits)}"
        )
    elif call_fault(exc):
        error = StorageCallError(
            f"Redis storage {config.safe_uri} refused the call: {describe_error(exc)}; "
            f"sent {describe_hits(hits)}"
        )
    else:
        error = StorageError(f"Redis storage {config.safe_uri} failed: {describe_error(exc)}")
    error.__cause__ = exc
    return error


def _not_sent(exc: redis.ConnectionError) -> bool:
    """Whether a redis-py command failed before it could run: safe to send again.

    Either no connection could be made, or a Sentinel-managed connection met a demoted
    master (``READONLY``: the script was refused before it wrote anything).
    """
    text = str(exc)
    return "connecting to" in text or "previous master is now a slave" in text


def _check_hit(prefix: str) -> list[Hit]:
    """What ``check()`` peeks at: a key nobody counts (a peek writes nothing)."""
    return [Hit(f"{prefix}:{{ratemw-check}}:ping", 1, 1000, 1, "fixed-window")]


def _match(prefix: str) -> str:
    """A SCAN pattern for every key under ``prefix`` (glob characters escaped)."""
    escaped = "".join("\\" + c if c in "*?[]\\" else c for c in prefix)
    return f"{escaped}:*"


_RESET_BATCH = 500


# -- the storages -----------------------------------------------------------------------------


class RedisStorage:
    """Synchronous Redis storage (used under WSGI).

    Example::

        storage = RedisStorage("redis://localhost:6379?socket_timeout=0.5")
        usages = storage.acquire(hits)

    Args:
        uri: ``redis://``, ``rediss://``, ``redis+unix://``, ``redis+cluster://``,
            ``redis+sentinel://`` or their ``valkey`` forms; options may be given in the query
            string.
        key_prefix: the prefix ``reset()`` clears.
        **options: ``socket_timeout``, ``socket_connect_timeout`` (seconds, default 0.1),
            ``max_connections`` (default 16), ``pool_timeout`` (seconds to wait for a free
            connection, default 1), ``username``, ``password``, ``db``, ``ssl_*``,
            ``health_check_interval``, ``sentinel_username``, ``sentinel_password``,
            ``blocked_cache_size`` (refused callers remembered locally, default 10000).
    """

    def __init__(self, uri: str, *, key_prefix: str = "ratemw", **options: Any) -> None:
        self._script_text, self._sha = compose_script()
        self.config = parse(uri, options)
        self.uri = uri
        self.key_prefix = key_prefix
        self.cluster = self.config.kind == "cluster"
        self.blocked = BlockedCache(self.config.options["blocked_cache_size"])
        self._slots = Slots(self.config.options["max_connections"])
        self._pool_timeout: float = self.config.options["pool_timeout"]
        self._failures = 0  # commands lost to timeouts and broken connections (see FailedAhead)
        self._pipe = _sync_pipe_for(self.config)  # the fast lane for scripts, single servers
        self._tokens = new_tokens()  # call tokens of the scripts sent through redis-py
        self._client: Any = None
        self._closers: list[Any] = []
        self._cluster_scripts: ClusterScripts | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The redis-py client, built on first use (a cluster client connects when built)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client, self._closers = build_client(self.config, asynchronous=False)
                    if self.cluster:
                        self._cluster_scripts = ClusterScripts(
                            self._client, self._sha, self._script_text
                        )
        return self._client

    def _script(self, keys: list[str], args: list[Any], command: bytes | None = None) -> Any:
        failures = self._failures
        taken = self._slots.acquire(self._pool_timeout)  # all busy: wait, but not for ever
        if taken is False:
            raise redis.ConnectionError("no free Redis connection (pool_timeout)")
        if taken is None and self._failures != failures:  # it waited behind failing calls
            self._slots.release()
            raise FailedAhead()
        try:
            if self._pipe is not None:  # a single server: the fast lane
                return self._pipe.script(self._sha, self._script_text, keys, args, command)
            return self._through_redis_py(keys, args)
        except UNHEALTHY:
            self._failures += 1
            raise
        finally:
            self._slots.release()

    def _through_redis_py(self, keys: list[str], args: list[Any]) -> Any:
        client = self.client
        token = next(self._tokens)
        sent = [*args, token]
        if self._cluster_scripts is not None:
            reply = self._cluster_scripts.call(keys, sent)
        else:  # Sentinel
            reply = self._sentinel_script(client, keys, sent)
        if not answers(reply, token):  # out of step: no connection of this client is trusted
            if self._cluster_scripts is not None:
                self._cluster_scripts.disconnect()
            else:
                client.connection_pool.disconnect()
            raise redis.ConnectionError(_OUT_OF_STEP)
        return reply

    def _sentinel_script(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        # Sent again only when it cannot have run: on a demoted master, the connection asks
        # the Sentinels again for the new one.
        for attempt in (1, 2):
            try:
                try:
                    return client.evalsha(self._sha, len(keys), *keys, *args)
                except NoScriptError:  # after a restart or SCRIPT FLUSH: EVAL loads it
                    return client.eval(self._script_text, len(keys), *keys, *args)
            except redis.ConnectionError as exc:
                if attempt == 2 or not _not_sent(exc):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _run(self, hits: Sequence[Hit], mode: str) -> list[Usage]:
        groups = slot_groups(hits) if self.cluster else []
        if len(groups) <= 1:
            return parse_reply(self._script(*script_args(hits, mode)), len(hits))
        calls = slot_by_slot(hits, groups, mode)
        reply = None
        while True:
            try:
                keys, args = calls.send(reply)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            reply = self._script(keys, args)

    def acquire(self, hits: Sequence[Hit]) -> list[Usage]:
        """Check all hits and consume them all if every enforced hit fits (one round trip)."""
        blocked = self.blocked
        if blocked.entries:  # someone is remembered: is it this caller?
            cached = blocked.get(BlockedCache.signature(hits))
            if cached is not None:
                return cached
        try:
            if self._pipe is not None:  # a single server: one script call, kept for a batch
                usages = parse_reply(self._script(*acquire_call(hits, self._sha)), len(hits))
            else:
                usages = self._run(hits, "acquire")
        except _FAILURES as exc:
            raise _storage_error(self.config, exc, hits) from exc
        if any_refused(hits, usages):
            blocked.remember(BlockedCache.signature(hits), hits, usages)
        return usages

    def peek(self, hits: Sequence[Hit]) -> list[Usage]:
        """Report the hits' usage without consuming anything."""
        try:
            return self._run(hits, "peek")
        except _FAILURES as exc:
            raise _storage_error(self.config, exc, hits) from exc

    def check(self) -> None:
        """Connect and run the script once, counting nothing (a start-up check).

        It peeks at a key nobody counts, so it loads the script too if the server lacks it.
        Raises ``StorageError`` naming the URI (never the password) and the reason when the
        storage cannot answer::

            RedisStorage("redis://:secret@redis:6379/0").check()
            # StorageError: Redis storage redis://redis:6379/0 failed: ConnectionError: ...
        """
        hits = _check_hit(self.key_prefix)
        try:
            self._run(hits, "peek")
        except _FAILURES as exc:
            raise _storage_error(self.config, exc, hits) from exc

    def refund(self, hits: Sequence[Hit], stamp_ms: int) -> None:
        """Give back what ``acquire`` took at ``stamp_ms`` (a response that does not count)."""
        self._hand_back(hits, stamp_ms, "refund")

    def release(self, hits: Sequence[Hit]) -> None:
        """Free the concurrency slots named by the hits' tokens."""
        self._hand_back(hits, 0, "refund")

    def _hand_back(self, hits: Sequence[Hit], stamp_ms: int, mode: str) -> None:
        if not hits:
            return
        self.blocked.forget({hit.key for hit in hits})
        try:
            for keys, args in refund_calls(hits, stamp_ms, mode):
                self._script(keys, args)
        except _FAILURES as exc:
            raise _storage_error(self.config, exc, hits) from exc

    def clear(self, key: str) -> None:
        """Forget one storage key (and every refusal remembered locally)."""
        self.blocked.clear()
        try:
            self.client.delete(key)
        except _ADMIN_FAILURES as exc:
            raise _storage_error(self.config, exc) from exc

    def reset(self) -> None:
        """Forget every key under this storage's prefix (other prefixes are untouched)."""
        self.blocked.clear()
        try:
            batch: list[Any] = []
            for key in self.client.scan_iter(match=_match(self.key_prefix), count=1000):
                batch.append(key)
                if len(batch) >= _RESET_BATCH:
                    self.client.delete(*batch)
                    batch = []
            if batch:
                self.client.delete(*batch)
        except _ADMIN_FAILURES as exc:
            raise _storage_error(self.config, exc) from exc

    def close(self) -> None:
        """Close every connection (the Sentinel ones included)."""
        if self._pipe is not None:
            self._pipe.close()
        if self._cluster_scripts is not None:
            self._cluster_scripts.close()
        client, closers = self._client, self._closers
        self._client, self._closers = None, []
        for each in (client, *closers):
            if each is not None:
                each.close()


def _single_address(config: RedisConfig) -> tuple[str, int] | str | None:
    """Where a single server listens (the pipes' address); None on Cluster and Sentinel."""
    if config.kind == "single":
        return config.hosts[0]
    if config.kind == "unix":
        return config.path
    return None


def _sync_pipe_for(config: RedisConfig) -> Pipe | None:
    address = _single_address(config)
    return None if address is None else Pipe(address, config.options, config.tls)


def _pipe_for(config: RedisConfig) -> AsyncPipe | None:
    address = _single_address(config)
    return None if address is None else AsyncPipe(address, config.options, config.tls)


class AsyncRedisStorage:
    """Asynchronous Redis storage (used under ASGI); the twin of ``RedisStorage``.

    Takes the same arguments. The client is built in the event loop that first uses it; a
    cluster client is initialised once, under a lock, before any command is sent on it.
    """

    def __init__(self, uri: str, *, key_prefix: str = "ratemw", **options: Any) -> None:
        self._script_text, self._sha = compose_script()
        self.config = parse(uri, options)
        self.uri = uri
        self.key_prefix = key_prefix
        self.cluster = self.config.kind == "cluster"
        self.blocked = BlockedCache(self.config.options["blocked_cache_size"])
        self._slots = asyncio.Semaphore(self.config.options["max_connections"])
        self._failures = 0  # commands lost to timeouts and broken connections (see FailedAhead)
        self.client, self._closers = build_client(self.config, asynchronous=True)
        self._cluster_scripts = (
            AsyncClusterScripts(self.client, self._sha, self._script_text) if self.cluster else None
        )
        self._pipe = _pipe_for(self.config)  # the fast lane for scripts, single servers only
        self._tokens = new_tokens()  # call tokens of the scripts sent through redis-py
        self._ready = not self.cluster
        self._init_lock: asyncio.Lock | None = None
        self._init_attempts = 0
        self._init_error: BaseException | None = None

    async def _ensure_ready(self) -> None:
        # redis-py's async cluster client is not safe to share half-initialised: many first
        # requests at once must wait for one initialisation. Those that queued behind a
        # failed one fail with it rather than each paying the timeout again.
        if self._ready:
            return
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

    async def _script(self, keys: list[str], args: list[Any]) -> Any:
        if self._pipe is not None:
            return await self._pipe.script(self._sha, self._script_text, keys, args)
        slots = self._slots
        if slots.locked():  # every connection busy: wait, but not for ever
            failures = self._failures
            try:
                await asyncio.wait_for(slots.acquire(), self.config.options["pool_timeout"])
            except asyncio.TimeoutError:
                raise redis.ConnectionError("no free Redis connection (pool_timeout)") from None
            if self._failures != failures:
                slots.release()
                raise FailedAhead()
        else:
            await slots.acquire()
        try:
            return await self._through_redis_py(keys, args)
        except UNHEALTHY:
            self._failures += 1
            raise
        finally:
            slots.release()

    async def _through_redis_py(self, keys: list[str], args: list[Any]) -> Any:
        token = next(self._tokens)
        sent = [*args, token]
        if self._cluster_scripts is not None:
            reply = await self._cluster_scripts.call(keys, sent)
        else:  # Sentinel
            reply = await self._sentinel_script(keys, sent)
        if not answers(reply, token):  # out of step: no connection of this client is trusted
            if self._cluster_scripts is not None:
                await self._cluster_scripts.disconnect()
            else:
                await self.client.connection_pool.disconnect()
            raise redis.ConnectionError(_OUT_OF_STEP)
        return reply

    async def _sentinel_script(self, keys: list[str], args: list[Any]) -> Any:
        # Sent again only when it cannot have run: on a demoted master, the connection asks
        # the Sentinels again for the new one.
        client = self.client
        for attempt in (1, 2):
            try:
                try:
                    return await client.evalsha(self._sha, len(keys), *keys, *args)
                except NoScriptError:  # after a restart or SCRIPT FLUSH: EVAL loads it
                    return await client.eval(self._script_text, len(keys), *keys, *args)
            except redis.ConnectionError as exc:
                if attempt == 2 or not _not_sent(exc):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run(self, hits: Sequence[Hit], mode: str) -> list[Usage]:
        if self._pipe is not None:  # a single server: the fast lane, straight to the wire
            keys, args = script_args(hits, mode)
            reply = await self._pipe.script(self._sha, self._script_text, keys, args)
            return parse_reply(reply, len(hits))
        if not self._ready:
            await self._ensure_ready()
        groups = slot_groups(hits) if self.cluster else []
        if len(groups) <= 1:
            return parse_reply(await self._script(*script_args(hits, mode)), len(hits))
        calls = slot_by_slot(hits, groups, mode)
        reply = None
        while True:
            try:
                keys, args = calls.send(reply)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            reply = await self._script(keys, args)

    async def acquire(self, hits: Sequence[Hit]) -> list[Usage]:
        """Check all hits and consume them all if every enforced hit fits (one round trip)."""
        blocked = self.blocked
        if blocked.entries:  # someone is remembered: is it this caller?
            cached = blocked.get(BlockedCache.signature(hits))
            if cached is not None:
                return cached
        try:
            if self._pipe is not None:  # _run's fast lane, inlined: this runs on every request
                keys, args, command = acquire_call(hits, self._sha)
                reply = await self._pipe.script(self._sha, self._script_text, keys, args, command)
                usages = parse_reply(reply, len(hits))
            else:
                usages = await self._run(hits, "acquire")
        except _FAILURES as exc:
            raise _storage_error(self.config, exc, hits) from exc
        if any_refused(hits, usages):
            blocked.remember(BlockedCache.signature(hits), hits, usages)
        return usages

    async def peek(self, hits: Sequence[Hit]) -> list[Usage]:
        """Report the hits' usage without consuming anything."""
        try:
            return await self._run(hits, "peek")
        except _FAILURES as exc:
            raise _storage_error(self.config, exc, hits) from exc

    async def check(self) -> None:
        """Connect and run the script once, counting nothing (a start-up check).

        It peeks at a key nobody counts, so it loads the script too if the server lacks it.
        Raises ``StorageError`` naming the URI (never the password) and the reason when the
        storage cannot answer.
        """
        hits = _check_hit(self.key_prefix)
        try:
            await self._run(hits, "peek")
        except _FAILURES as exc:
            raise _storage_error(self.config, exc, hits) from exc

    async def refund(self, hits: Sequence[Hit], stamp_ms: int) -> None:
        """Give back what ``acquire`` took at ``stamp_ms`` (a response that does not count)."""
        await self._hand_back(hits, stamp_ms, "refund")

    async def release(self, hits: Sequence[Hit]) -> None:
        """Free the concurrency slots named by the hits' tokens."""
        await self._hand_back(hits, 0, "refund")

    async def _hand_back(self, hits: Sequence[Hit], stamp_ms: int, mode: str) -> None:
        if not hits:
            return
        self.blocked.forget({hit.key for hit in hits})
        try:
            await self._ensure_ready()
            for keys, args in refund_calls(hits, stamp_ms, mode):
                await self._script(keys, args)
        except _FAILURES as exc:
            raise _storage_error(self.config, exc, hits) from exc

    async def clear(self, key: str) -> None:
        """Forget one storage key (and every refusal remembered locally)."""
        self.blocked.clear()
        try:
            await self._ensure_ready()
            await self.client.delete(key)
        except _ADMIN_FAILURES as exc:
            raise _storage_error(self.config, exc) from exc

    async def reset(self) -> None:
        """Forget every key under this storage's prefix (other prefixes are untouched)."""
        self.blocked.clear()
        try:
            await self._ensure_ready()
            batch: list[Any] = []
            async for key in self.client.scan_iter(match=_match(self.key_prefix), count=1000):
                batch.append(key)
                if len(batch) >= _RESET_BATCH:
                    await self.client.delete(*batch)
                    batch = []
            if batch:
                await self.client.delete(*batch)
        except _ADMIN_FAILURES as exc:
            raise _storage_error(self.config, exc) from exc

    async def aclose(self) -> None:
        """Close every connection (the Sentinel ones included)."""
        if self._pipe is not None:
            await self._pipe.aclose()
        if self._cluster_scripts is not None:
            await self._cluster_scripts.aclose()
        for each in (self.client, *self._closers):
            await each.aclose()
        self._closers = []
        self._ready = not self.cluster
