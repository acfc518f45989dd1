"""Storage backends, chosen by URI.

``memory://`` is embedded (``memory.py``); ``redis://``, ``rediss://``, ``redis+unix://``,
``redis+cluster://``, ``redis+sentinel://`` and their ``valkey`` spellings talk to a
Redis-compatible server (the ``redis`` package, which holds its schemes). Every backend
answers one request's hits in one atomic step, through the protocols of ``base.py``, counting
by the strategies of ``strategies.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ratemw._clock import wall_clock_ms
from ratemw.errors import ConfigurationError
from ratemw.storage.base import STRATEGIES, AsyncStorage, Batch, Hit, Storage, Usage
from ratemw.storage.memory import AsyncMemoryStorage, MemoryStorage

__all__ = [
    "STRATEGIES",
    "AsyncMemoryStorage",
    "AsyncStorage",
    "Batch",
    "Hit",
    "MemoryStorage",
    "Storage",
    "StorageBackends",
    "Usage",
    "storage_scheme",
]


def storage_scheme(uri: str) -> str:
    """The scheme of a storage URI, lower-cased; ``ConfigurationError`` if no storage has it."""
    if not isinstance(uri, str) or "://" not in uri:
        raise ConfigurationError(
            f"invalid storage URI {uri!r}: expected e.g. 'memory://' or 'redis://localhost:6379'"
        )
    scheme = uri.split("://", 1)[0].lower()
    if scheme == "memory":
        return scheme
    from ratemw.storage.redis.config import SCHEMES  # each backend holds its own schemes

    if scheme not in SCHEMES:
        known = ", ".join(["memory", *sorted(SCHEMES)])
        raise ConfigurationError(
            f"unknown storage scheme {scheme!r} in {uri!r}; supported schemes: {known}"
        )
    return scheme


class StorageBackends:
    """The sync and async faces of one storage URI, built on first use.

    Under ASGI the async face is used and under WSGI the sync one; for ``memory://`` both
    faces share one table, for Redis each face has its own connection pool.
    """

    def __init__(
        self,
        uri: str,
        *,
        options: dict[str, Any] | None = None,
        clock: Callable[[], int] | None = None,
        key_prefix: str = "ratemw",
    ) -> None:
        self.uri = uri
        self.key_prefix = key_prefix
        self.scheme = storage_scheme(uri)
        self.options = dict(options or {})
        self.clock = clock
        # The memory storage cannot fail or block: drivers call it directly.
        self.memory: MemoryStorage | None = None
        if self.scheme == "memory":
            self.memory = self._build_memory()
            self.sync = self.memory  # both faces share the one table
            self.async_ = AsyncMemoryStorage(self.memory)
        else:
            from ratemw.storage import redis as redis_storage

            redis_storage.validate(uri, self.options)

    def _build_memory(self) -> MemoryStorage:
        query = dict(parse_qsl(urlsplit(self.uri).query))
        max_keys_text = self.options.pop("max_keys", query.get("max_keys", 100_000))
        try:
            max_keys = int(max_keys_text)
        except (TypeError, ValueError):
            max_keys = 0
        if max_keys < 1:
            raise ConfigurationError(
                f"invalid max_keys {max_keys_text!r} for memory storage: "
                "expected a positive integer"
            )
        if self.options:
            raise ConfigurationError(
                f"unknown memory storage options {sorted(self.options)!r}; known: ['max_keys']"
            )
        return MemoryStorage(max_keys=max_keys, clock=self.clock or wall_clock_ms)

    # Redis faces are built on first use; once built, a face is a plain attribute (read on
    # every request). A memory backend sets both when it is made.
    @cached_property
    def sync(self) -> Storage:
        from ratemw.storage import redis as redis_storage

        return redis_storage.RedisStorage(self.uri, key_prefix=self.key_prefix, **self.options)

    @cached_property
    def async_(self) -> AsyncStorage:
        from ratemw.storage import redis as redis_storage

        return redis_storage.AsyncRedisStorage(self.uri, key_prefix=self.key_prefix, **self.options)
