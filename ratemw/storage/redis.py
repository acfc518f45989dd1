"""Redis storage (standalone, TLS, Unix socket, Cluster, Sentinel, Valkey): one round trip.

Every request's hits go to the server in one ``EVALSHA`` of ``acquire.lua``, which checks
them all, consumes them all or none, and returns the numbers for the headers, on the server's
clock. A caller who is refused is remembered locally until the earliest moment one of its
violated limits could change, so a flood from one key costs Redis nothing.

On a Redis Cluster, all of one caller's keys share a hash tag (the hashed identity) and so
one slot. A request whose limits count different identities (say, per user and per address)
spans slots; it then takes one script call per slot, consuming in turn and handing back what
it took if a later slot refuses, so it never over-admits.

Under ASGI, a single server (TCP, TLS or Unix socket) gets the scripts over one pipelined
connection per event loop (``_pipe.py``), which costs about half a redis-py round trip;
Cluster and Sentinel, and every command other than the script, go through redis-py.

Failures are bounded: every command has a socket timeout (0.1 s by default), a lost
connection is retried once (a pooled connection may have died with a restarted server), a
timed-out command never (the script may have run), and at most ``max_connections`` commands
are in flight per redis-py pool. A command queued for a free connection is not sent when one
ahead of it failed meanwhile, so no request waits for more than one timeout.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.retry import Retry

from ratemw.errors import StorageError
from ratemw._redact import describe_error
from ratemw.storage._base import Hit, Usage
from ratemw.storage._blocked import BlockedCache
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
    acquire_call,
    any_refused,
    compose_script,
    parse_reply,
    refund_calls,
    script_args,
    serves,
    slot_by_slot,
    slot_groups,
)
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



# -- clients ---------------------------------------------------------------------------------


def _retry(asynchronous: bool, retries: int = 1) -> Any:
    # One retry on a lost connection: a pooled connection dies with a restarted or failed-over
    # server. Never on a timeout: the script may have run, and running it again would count
    # the request twice.
    cls = redis.asyncio.retry.Retry if asynchronous else Retry
    return cls(NoBackoff(), retries, supported_errors=(redis.ConnectionError,))


def _connection_options(config: RedisConfig, asynchronous: bool) -> dict[str, Any]:
    options = config.client_options()
    # redis-py 8 retries a Sentinel connection on the address it had, the demoted master's:
    # the storage retries itself instead, on a connection that asks the Sentinel again.
    options["retry"] = _retry(asynchronous, 0 if config.kind == "sentinel" else 1)
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


# -- bounded waits -----------------------------------------------------------------------------



# A timeout or a broken connection: the server (or the way to it) is failing.
_UNHEALTHY = (redis.ConnectionError, redis.TimeoutError)


class _FailedAhead(redis.ConnectionError):
    """A command that waited for a free connection is not sent: one ahead of it failed.

    When the server hangs, every connection is soon busy waiting out its socket timeout and
    further requests queue for one. Sending them on as connections free up would make each
    wait for a connection *and then* for its own timeout, several timeouts in a row; they
    fail as soon as a command ahead of them does instead, so no request waits on an
    unhealthy server for longer than one socket timeout (and the limiter's circuit breaker
    spares the next ones the wait altogether).
    """

    def __init__(self) -> None:
        super().__init__("Redis is failing: a command ahead of this one failed; not sent")


class _Slots:
    """At most ``size`` threads at a time hold a slot; waiters are served in arrival order
    (but for a thread arriving in the instant a slot is handed over).

    ``threading.Semaphore`` lets a thread that just released take the slot again ahead of
    the ones waiting: a thread pool larger than the pool of connections then starves some
    requests until ``pool_timeout``, on a perfectly healthy server. Here ``release`` hands
    the slot straight to the longest waiter.

    Free slots are tokens in a deque, whose ``pop`` and ``append`` are atomic: while nobody
    waits, taking and giving back a slot costs no lock. Waiting goes through the lock. The
    first waiter looks for a token once queued, and ``release`` looks for a waiter after
    putting its token back: whichever comes second sees the other, so a slot is never left
    free while a thread waits for it. (This leans on the GIL's ordering of those steps.)
    """

    def __init__(self, size: int) -> None:
        self._tokens: deque[None] = deque([None] * size)
        self._lock = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()

    @property
    def free(self) -> int:
        """Slots nobody holds."""
        return len(self._tokens)

    def acquire(self, timeout: float) -> bool | None:
        """Take a slot: ``True`` at once, ``None`` after waiting, ``False`` not in ``timeout``."""
        if not self._waiters:  # nobody is ahead of this thread
            try:
                self._tokens.pop()
                return True
            except IndexError:
                pass
        with self._lock:
            waiter = threading.Lock()
            waiter.acquire()
            self._waiters.append(waiter)
            # A slot given back just before this thread queued found nobody to hand it to.
            if self._waiters[0] is waiter and self._tokens:
                try:
                    self._tokens.pop()
                except IndexError:
                    pass
                else:
                    self._waiters.popleft()
                    return True
        if waiter.acquire(timeout=timeout):
            return None  # handed over by release()
        with self._lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                return False
        return None  # handed over between the timeout and this thread's taking the lock

    def release(self) -> None:
        self._tokens.append(None)
        if self._waiters:
            with self._lock:
                if self._waiters:
                    try:
                        self._tokens.pop()
                    except IndexError:  # taken meanwhile, by a thread that had queued
                        return
                    self._waiters.popleft().release()


def _storage_error(config: RedisConfig, exc: BaseException) -> StorageError:
    error = StorageError(f"Redis storage {config.safe_uri} failed: {describe_error(exc)}")
    error.__cause__ = exc
    return error


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
        # A lost Sentinel connection is retried here (see _connection_options).
        self._attempts = 2 if self.config.kind == "sentinel" else 1
        self._slots = _Slots(self.config.options["max_connections"])
        self._pool_timeout: float = self.config.options["pool_timeout"]
        self._failures = 0  # commands lost to timeouts and broken connections (see _FailedAhead)
        self._pipe = _sync_pipe_for(self.config)  # the fast lane for scripts, single servers
        self._client: Any = None
        self._closers: list[Any] = []
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The redis-py client, built on first use (a cluster client connects when built)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client, self._closers = build_client(self.config, asynchronous=False)
        return self._client

    def _script(self, keys: list[str], args: list[Any], command: bytes | None = None) -> Any:
        failures = self._failures
        taken = self._slots.acquire(self._pool_timeout)  # all busy: wait, but not for ever
        if taken is False:
            raise redis.ConnectionError("no free Redis connection (pool_timeout)")
        if taken is None and self._failures != failures:  # it waited behind failing calls
            self._slots.release()
            raise _FailedAhead()
        try:
            if self._pipe is not None:  # a single server: the fast lane
                return self._pipe.script(self._sha, self._script_text, keys, args, command)
            client = self.client
            for attempt in range(self._attempts):
                try:
                    try:
                        return client.evalsha(self._sha, len(keys), *keys, *args)
                    except NoScriptError:  # after a restart or SCRIPT FLUSH: EVAL loads it
                        return client.eval(self._script_text, len(keys), *keys, *args)
                except redis.ConnectionError:
                    if attempt + 1 == self._attempts:
                        raise
        except _UNHEALTHY:
            self._failures += 1
            raise
        finally:
            self._slots.release()

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
        except _ERRORS as exc:
            raise _storage_error(self.config, exc) from exc
        if any_refused(hits, usages):
            blocked.remember(BlockedCache.signature(hits), hits, usages)
        return usages

    def peek(self, hits: Sequence[Hit]) -> list[Usage]:
        """Report the hits' usage without consuming anything."""
        try:
            return self._run(hits, "peek")
        except _ERRORS as exc:
            raise _storage_error(self.config, exc) from exc

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
        except _ERRORS as exc:
            raise _storage_error(self.config, exc) from exc

    def clear(self, key: str) -> None:
        """Forget one storage key (and every refusal remembered locally)."""
        self.blocked.clear()
        try:
            self.client.delete(key)
        except _ERRORS as exc:
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
        except _ERRORS as exc:
            raise _storage_error(self.config, exc) from exc

    def close(self) -> None:
        """Close every connection (the Sentinel ones included)."""
        if self._pipe is not None:
            self._pipe.close()
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
        # A lost Sentinel connection is retried here (see _connection_options).
        self._attempts = 2 if self.config.kind == "sentinel" else 1
        self._slots = asyncio.Semaphore(self.config.options["max_connections"])
        self._failures = 0  # commands lost to timeouts and broken connections (see _FailedAhead)
        self.client, self._closers = build_client(self.config, asynchronous=True)
        self._pipe = _pipe_for(self.config)  # the fast lane for scripts, single servers only
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
                raise _FailedAhead()
        else:
            await slots.acquire()
        try:
            for attempt in range(self._attempts):
                try:
                    try:
                        return await self.client.evalsha(self._sha, len(keys), *keys, *args)
                    except NoScriptError:  # after a restart or SCRIPT FLUSH: EVAL loads it
                        return await self.client.eval(self._script_text, len(keys), *keys, *args)
                except redis.ConnectionError:
                    if attempt + 1 == self._attempts:
                        raise
        except _UNHEALTHY:
            self._failures += 1
            raise
        finally:
            slots.release()

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
        except _ERRORS as exc:
            raise _storage_error(self.config, exc) from exc
        if any_refused(hits, usages):
            blocked.remember(BlockedCache.signature(hits), hits, usages)
        return usages

    async def peek(self, hits: Sequence[Hit]) -> list[Usage]:
        """Report the hits' usage without consuming anything."""
        try:
            return await self._run(hits, "peek")
        except _ERRORS as exc:
            raise _storage_error(self.config, exc) from exc

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
        except _ERRORS as exc:
            raise _storage_error(self.config, exc) from exc

    async def clear(self, key: str) -> None:
        """Forget one storage key (and every refusal remembered locally)."""
        self.blocked.clear()
        try:
            await self._ensure_ready()
            await self.client.delete(key)
        except _ERRORS as exc:
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
        except _ERRORS as exc:
            raise _storage_error(self.config, exc) from exc

    async def aclose(self) -> None:
        """Close every connection (the Sentinel ones included)."""
        if self._pipe is not None:
            await self._pipe.aclose()
        for each in (self.client, *self._closers):
            await each.aclose()
        self._closers = []
        self._ready = not self.cluster
