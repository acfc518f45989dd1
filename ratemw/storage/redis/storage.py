"""``RedisStorage``: the sync Redis storage (WSGI). Its async twin is ``astorage.py``.

Every request's hits go to Redis in one call of ``acquire.lua``, through the transport chosen
when the storage is built (``transport.py``); at most ``max_connections`` calls are in flight
(``pool.Slots``). A refused caller is remembered locally (``blocked.py``). The administrative
commands go through redis-py's client (``clients.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from ratemw.storage.base import Hit, Usage, any_refused
from ratemw.storage.redis.admin import (
    MARK_RESET,
    RESET_BATCH,
    check_hits,
    reset_time,
    resets_key,
    scan_pattern,
)
from ratemw.storage.redis.blocked import BlockedCache
from ratemw.storage.redis.clients import Client
from ratemw.storage.redis.config import parse
from ratemw.storage.redis.faults import ADMIN_FAILURES, FAILURES, storage_error
from ratemw.storage.redis.pool import UNHEALTHY, Slots
from ratemw.storage.redis.script import acquire_call, compose_script, parse_reply, script_args
from ratemw.storage.redis.spans import refund_calls, slot_by_slot, slot_groups
from ratemw.storage.redis.transport import script_transport

__all__ = ["RedisStorage", "RedisStorageBase"]


class RedisStorageBase:
    """What both Redis storages settle once, when they are built: the configuration, the
    script (with the Lua of strategies of one's own), the memory of refused callers, and
    where the reset mark lives."""

    def __init__(self, uri: str, key_prefix: str, options: dict[str, Any]) -> None:
        self.config = parse(uri, options)
        self.uri = uri
        self.key_prefix = key_prefix
        self.cluster = self.config.kind == "cluster"
        self.blocked = BlockedCache(self.config.options["blocked_cache_size"])
        self._text, self._sha = compose_script()
        self._resets = resets_key(key_prefix)


class RedisStorage(RedisStorageBase):
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
            ``blocked_cache_size`` (refused callers remembered locally, default 10000),
            ``transport`` (``"pipe"``, the default on a single server, or ``"redis-py"``).
    """

    def __init__(self, uri: str, *, key_prefix: str = "ratemw", **options: Any) -> None:
        super().__init__(uri, key_prefix, options)
        self._slots = Slots(self.config.options["max_connections"])
        self._pool_timeout: float = self.config.options["pool_timeout"]
        self._redis = Client(self.config)
        # Chosen once: the one way this storage's scripts reach Redis.
        self.transport = script_transport(self.config, self._redis)

    @property
    def client(self) -> Any:
        """redis-py's client (the administrative commands'), built on first use."""
        return self._redis.get()

    def _script(self, keys: list[str], args: list[Any], packed: bytes | None = None) -> Any:
        slots = self._slots
        failures = slots.failures
        taken = slots.acquire(self._pool_timeout)  # all busy: wait, but not for ever
        if taken is not True:
            slots.after_wait(taken, failures)
        try:
            return self.transport.script(self._sha, self._text, keys, args, packed)
        except UNHEALTHY:
            slots.failures += 1
            raise
        finally:
            slots.release()

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
            if cached is not None and blocked.resets_due():  # was anyone reset meanwhile?
                self._see_resets()
                cached = blocked.get(BlockedCache.signature(hits))
            if cached is not None:
                return cached
        try:
            if self.cluster:  # the request may span slots
                usages = self._run(hits, "acquire")
            else:  # one call, kept for a batch
                usages = parse_reply(self._script(*acquire_call(hits, self._sha)), len(hits))
        except FAILURES as exc:
            raise storage_error(self.config, exc, hits) from exc
        if any_refused(hits, usages):
            blocked.remember(BlockedCache.signature(hits), hits, usages)
        return usages

    def peek(self, hits: Sequence[Hit]) -> list[Usage]:
        """Report the hits' usage without consuming anything."""
        try:
            return self._run(hits, "peek")
        except FAILURES as exc:
            raise storage_error(self.config, exc, hits) from exc

    def check(self) -> None:
        """Connect and run the script once, counting nothing (a start-up check).

        It peeks at a key nobody counts, so it loads the script too if the server lacks it.
        Raises ``StorageError`` naming the URI (never the password) and the reason when the
        storage cannot answer::

            RedisStorage("redis://:secret@redis:6379/0").check()
            # StorageError: Redis storage redis://redis:6379/0 failed: ConnectionError: ...
        """
        self.peek(check_hits(self.key_prefix))

    def refund(self, hits: Sequence[Hit], stamp_ms: int) -> None:
        """Give back what ``acquire`` took at ``stamp_ms`` (a response that does not count)."""
        self._hand_back(hits, stamp_ms)

    def release(self, hits: Sequence[Hit]) -> None:
        """Free the concurrency slots named by the hits' tokens."""
        self._hand_back(hits, 0)

    def _hand_back(self, hits: Sequence[Hit], stamp_ms: int) -> None:
        if not hits:
            return
        self.blocked.forget({hit.key for hit in hits})
        try:
            for keys, args in refund_calls(hits, stamp_ms, "refund"):
                self._script(keys, args)
        except FAILURES as exc:
            raise storage_error(self.config, exc, hits) from exc

    # -- administrative commands, through redis-py -------------------------------------------

    def exists(self, keys: Sequence[str]) -> int:
        """How many of ``keys`` hold counts (0: nothing is counted under any of them)."""
        if not keys:
            return 0
        try:
            return int(self.client.exists(*keys))
        except ADMIN_FAILURES as exc:
            raise storage_error(self.config, exc) from exc

    def clear(self, key: str) -> bool:
        """Forget one storage key; whether it held counts. Every process forgets the
        refusals it remembers within a second (this one at once)."""
        self.blocked.clear()
        try:
            removed = bool(self.client.delete(key))
            self._mark_reset()
        except ADMIN_FAILURES as exc:
            raise storage_error(self.config, exc) from exc
        return removed

    def reset(self) -> None:
        """Forget every key under this storage's prefix (other prefixes are untouched).
        Every process forgets the refusals it remembers within a second (this one at once)."""
        self.blocked.clear()
        client = self.client
        try:
            batch: list[Any] = []
            for key in client.scan_iter(match=scan_pattern(self.key_prefix), count=1000):
                batch.append(key)
                if len(batch) >= RESET_BATCH:
                    client.delete(*batch)
                    batch = []
            if batch:
                client.delete(*batch)
            self._mark_reset()
        except ADMIN_FAILURES as exc:
            raise storage_error(self.config, exc) from exc

    def _mark_reset(self) -> None:
        self.blocked.saw_reset(int(self.client.eval(MARK_RESET, 1, self._resets)))

    def _see_resets(self) -> None:
        """Read the reset mark (``blocked.py``); if Redis cannot say, ask again later."""
        # If Redis cannot say, the refusals stand until their waits end, or the mark is read.
        with contextlib.suppress(*ADMIN_FAILURES):
            self.blocked.saw_reset(reset_time(self.client.get(self._resets)))

    def close(self) -> None:
        """Close every connection (the Sentinel ones included)."""
        self.transport.close()
        self._redis.close()
