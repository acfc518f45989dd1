"""``AsyncRedisStorage``: the async Redis storage (ASGI), the twin of ``storage.py``.

Every request's hits go to Redis in one call of ``acquire.lua``, through the transport chosen
when the storage is built (``transport.py``). A refused caller is remembered locally
(``blocked.py``). The administrative commands go through redis-py's client (``clients.py``),
built in the event loop that first uses it.
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
    scan_pattern,
)
from ratemw.storage.redis.blocked import BlockedCache
from ratemw.storage.redis.clients import AsyncClient
from ratemw.storage.redis.faults import ADMIN_FAILURES, FAILURES, storage_error
from ratemw.storage.redis.script import acquire_call, parse_reply, script_args
from ratemw.storage.redis.spans import refund_calls, slot_by_slot, slot_groups
from ratemw.storage.redis.storage import RedisStorageBase
from ratemw.storage.redis.transport import async_script_transport

__all__ = ["AsyncRedisStorage"]


class AsyncRedisStorage(RedisStorageBase):
    """Asynchronous Redis storage (used under ASGI); the twin of ``RedisStorage``.

    Takes the same arguments. The client is built in the event loop that first uses it; a
    cluster client is initialised once, under a lock, before any command is sent on it.
    """

    def __init__(self, uri: str, *, key_prefix: str = "ratemw", **options: Any) -> None:
        super().__init__(uri, key_prefix, options)
        self._redis = AsyncClient(self.config)
        # Chosen once: the one way this storage's scripts reach Redis.
        self.transport = async_script_transport(self.config, self._redis)

    @property
    def client(self) -> Any:
        """redis-py's client (the administrative commands')."""
        return self._redis.client

    async def _run(self, hits: Sequence[Hit], mode: str) -> list[Usage]:
        groups = slot_groups(hits) if self.cluster else []
        transport, sha, text = self.transport, self._sha, self._text
        if len(groups) <= 1:
            reply = await transport.script(sha, text, *script_args(hits, mode))
            return parse_reply(reply, len(hits))
        calls = slot_by_slot(hits, groups, mode)
        reply = None
        while True:
            try:
                keys, args = calls.send(reply)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            reply = await transport.script(sha, text, keys, args)

    async def acquire(self, hits: Sequence[Hit]) -> list[Usage]:
        """Check all hits and consume them all if every enforced hit fits (one round trip)."""
        blocked = self.blocked
        if blocked.entries:  # someone is remembered: is it this caller?
            cached = blocked.get(BlockedCache.signature(hits))
            if cached is not None and blocked.resets_due():  # was anyone reset meanwhile?
                await self._see_resets()
                cached = blocked.get(BlockedCache.signature(hits))
            if cached is not None:
                return cached
        try:
            if self.cluster:  # the request may span slots
                usages = await self._run(hits, "acquire")
            else:  # one call, kept for a batch
                keys, args, packed = acquire_call(hits, self._sha)
                reply = await self.transport.script(self._sha, self._text, keys, args, packed)
                usages = parse_reply(reply, len(hits))
        except FAILURES as exc:
            raise storage_error(self.config, exc, hits) from exc
        if any_refused(hits, usages):
            blocked.remember(BlockedCache.signature(hits), hits, usages)
        return usages

    async def peek(self, hits: Sequence[Hit]) -> list[Usage]:
        """Report the hits' usage without consuming anything."""
        try:
            return await self._run(hits, "peek")
        except FAILURES as exc:
            raise storage_error(self.config, exc, hits) from exc

    async def check(self) -> None:
        """Connect and run the script once, counting nothing (a start-up check).

        It peeks at a key nobody counts, so it loads the script too if the server lacks it.
        Raises ``StorageError`` naming the URI (never the password) and the reason when the
        storage cannot answer.
        """
        await self.peek(check_hits(self.key_prefix))

    async def refund(self, hits: Sequence[Hit], stamp_ms: int) -> None:
        """Give back what ``acquire`` took at ``stamp_ms`` (a response that does not count)."""
        await self._hand_back(hits, stamp_ms)

    async def release(self, hits: Sequence[Hit]) -> None:
        """Free the concurrency slots named by the hits' tokens."""
        await self._hand_back(hits, 0)

    async def _hand_back(self, hits: Sequence[Hit], stamp_ms: int) -> None:
        if not hits:
            return
        self.blocked.forget({hit.key for hit in hits})
        try:
            for keys, args in refund_calls(hits, stamp_ms, "refund"):
                await self.transport.script(self._sha, self._text, keys, args)
        except FAILURES as exc:
            raise storage_error(self.config, exc, hits) from exc

    # -- administrative commands, through redis-py -------------------------------------------

    async def exists(self, keys: Sequence[str]) -> int:
        """How many of ``keys`` hold counts (0: nothing is counted under any of them)."""
        if not keys:
            return 0
        try:
            client = await self._redis.get()
            return int(await client.exists(*keys))
        except ADMIN_FAILURES as exc:
            raise storage_error(self.config, exc) from exc

    async def clear(self, key: str) -> bool:
        """Forget one storage key; whether it held counts. Every process forgets the
        refusals it remembers within a second (this one at once)."""
        self.blocked.clear()
        try:
            client = await self._redis.get()
            removed = bool(await client.delete(key))
            await self._mark_reset(client)
        except ADMIN_FAILURES as exc:
            raise storage_error(self.config, exc) from exc
        return removed

    async def reset(self) -> None:
        """Forget every key under this storage's prefix (other prefixes are untouched).
        Every process forgets the refusals it remembers within a second (this one at once)."""
        self.blocked.clear()
        try:
            client = await self._redis.get()
            batch: list[Any] = []
            async for key in client.scan_iter(match=scan_pattern(self.key_prefix), count=1000):
                batch.append(key)
                if len(batch) >= RESET_BATCH:
                    await client.delete(*batch)
                    batch = []
            if batch:
                await client.delete(*batch)
            await self._mark_reset(client)
        except ADMIN_FAILURES as exc:
            raise storage_error(self.config, exc) from exc

    async def _mark_reset(self, client: Any) -> None:
        self.blocked.saw_reset(int(await client.eval(MARK_RESET, 1, self._resets)))

    async def _see_resets(self) -> None:
        """Read the reset mark (``blocked.py``); if Redis cannot say, ask again later."""
        # If Redis cannot say, the refusals stand until their waits end, or the mark is read.
        with contextlib.suppress(*ADMIN_FAILURES):
            client = await self._redis.get()
            self.blocked.saw_reset(reset_time(await client.get(self._resets)))

    async def aclose(self) -> None:
        """Close every connection (the Sentinel ones included)."""
        await self.transport.aclose()
        await self._redis.aclose()
