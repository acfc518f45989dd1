"""Redis storage (standalone, TLS, Unix socket, Cluster, Sentinel, Valkey): one round trip.

Every request's hits go to the server in one ``EVALSHA`` of ``acquire.lua``, which checks
them all, consumes them all or none, and returns the numbers for the headers, on the server's
clock. A caller who is refused is remembered locally until the earliest moment one of its
violated limits could change, so a flood from one key costs Redis nothing.

On a Redis Cluster, all of one caller's keys share a hash tag (the hashed identity) and so
one slot. A request whose limits count different identities (say, per user and per address)
spans slots; it then takes one script call per slot, consuming in turn and handing back what
it took if a later slot refuses, so it never over-admits.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.exceptions import NoScriptError, RedisError

from ratemw._exceptions import ConfigurationError, StorageError
from ratemw.storage._base import Hit, Usage

SCRIPT = resources.files("ratemw.storage").joinpath("acquire.lua").read_text("utf-8")
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode("utf-8")).hexdigest()
REFUND = """
for i = 1, #KEYS do
  local base = (i - 1) * 3
  local strategy, cost, stamp = ARGV[base + 1], tonumber(ARGV[base + 2]), ARGV[base + 3]
  if strategy == 'fw' then
    if redis.call('PTTL', KEYS[i]) > 0 then redis.call('DECRBY', KEYS[i], cost) end
  elseif strategy == 'mw' then
    redis.call('LREM', KEYS[i], 1, stamp .. ':' .. cost)
  else
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('HINCRBY', KEYS[i], 'c', -cost) end
  end
end
return 1
"""
_TAGS = {"fixed-window": "fw", "moving-window": "mw", "sliding-window-counter": "sw"}

DEFAULT_OPTIONS: dict[str, Any] = {
    "socket_timeout": 0.25,
    "socket_connect_timeout": 0.25,
    "max_connections": 64,
}
_KNOWN_OPTIONS = frozenset(
    {
        "socket_timeout",
        "socket_connect_timeout",
        "max_connections",
        "username",
        "password",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_ca_certs",
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "health_check_interval",
        "retry_on_timeout",
        "key_prefix",
        "blocked_cache_size",
        "sentinel_password",
        "sentinel_username",
        "db",
    }
)
_BLOCKED_CACHE_SIZE = 10_000


# -- URIs ------------------------------------------------------------------------------------


def _kind(uri: str) -> str:
    scheme = uri.split("://", 1)[0].lower()
    if scheme.endswith("+cluster"):
        return "cluster"
    if scheme.endswith("+sentinel"):
        return "sentinel"
    return "single"


def _hosts(netloc: str) -> list[tuple[str, int]]:
    hosts = []
    for part in netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = part.rpartition(":")
        if not host:
            host, port = part, ""
        try:
            hosts.append((host.strip("[]") or "localhost", int(port) if port else 6379))
        except ValueError:
            raise ConfigurationError(f"invalid port {port!r} in storage URI") from None
    return hosts


def _credentials(parts: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if parts.username:
        found["username"] = unquote(parts.username)
    if parts.password:
        found["password"] = unquote(parts.password)
    return found


def validate(uri: str, options: dict[str, Any]) -> None:
    """Refuse a malformed Redis URI or unknown option at start-up."""
    unknown = sorted(set(options) - _KNOWN_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"unknown Redis storage options {unknown!r}; known: {sorted(_KNOWN_OPTIONS)}"
        )
    parts = urlsplit(uri)
    kind = _kind(uri)
    if kind == "single" and "+unix" not in parts.scheme and not parts.hostname:
        raise ConfigurationError(f"storage URI {uri!r} names no host")
    if kind in ("cluster", "sentinel"):
        _hosts(parts.netloc)
    if kind == "sentinel" and not parts.path.strip("/"):
        raise ConfigurationError(
            f"sentinel storage URI {uri!r} names no service, e.g. "
            "'redis+sentinel://localhost:26379/mymaster'"
        )


def _client_options(options: dict[str, Any]) -> dict[str, Any]:
    merged = {**DEFAULT_OPTIONS, **options}
    for ours in ("key_prefix", "blocked_cache_size", "sentinel_password", "sentinel_username"):
        merged.pop(ours, None)
    return merged


def _single_url(uri: str) -> str:
    scheme, rest = uri.split("://", 1)
    scheme = scheme.lower().replace("valkey", "redis")
    if scheme.endswith("+unix"):
        return "unix://" + rest
    return f"{scheme}://{rest}"


def build_client(uri: str, options: dict[str, Any], *, asynchronous: bool) -> Any:
    """A redis-py client (sync or async) for one of the URIs ``limits`` understands."""
    parts = urlsplit(uri)
    kind = _kind(uri)
    client_options = _client_options(options)
    if kind == "single":
        factory = redis.asyncio.Redis if asynchronous else redis.Redis
        return factory.from_url(_single_url(uri), **client_options)
    credentials = {**_credentials(parts), **client_options}
    if kind == "cluster":
        if parts.scheme.lower().startswith(("rediss", "valkeys")):
            credentials["ssl"] = True
        credentials.pop("db", None)
        if asynchronous:
            nodes = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in _hosts(parts.netloc)]
            return redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, **credentials)
        sync_nodes = [
            redis.cluster.ClusterNode(h, p)  # type: ignore[no-untyped-call]
            for h, p in _hosts(parts.netloc)
        ]
        return redis.cluster.RedisCluster(startup_nodes=sync_nodes, **credentials)
    path = [p for p in parts.path.split("/") if p]
    service = path[0]
    if len(path) > 1:
        credentials.setdefault("db", int(path[1]))
    sentinel_kwargs = {
        k: v
        for k, v in (
            ("password", options.get("sentinel_password", credentials.get("password"))),
            ("username", options.get("sentinel_username")),
            ("socket_timeout", client_options["socket_timeout"]),
            ("socket_connect_timeout", client_options["socket_connect_timeout"]),
        )
        if v is not None
    }
    sentinel_cls = redis.asyncio.sentinel.Sentinel if asynchronous else redis.sentinel.Sentinel
    sentinel = sentinel_cls(_hosts(parts.netloc), sentinel_kwargs=sentinel_kwargs)
    credentials.pop("max_connections", None)
    return sentinel.master_for(service, **credentials)


# -- the script's arguments and answer --------------------------------------------------------


def script_args(hits: Sequence[Hit], mode: str) -> tuple[list[str], list[Any]]:
    keys = [hit.key for hit in hits]
    args: list[Any] = [mode]
    for hit in hits:
        args += [_TAGS[hit.strategy], hit.amount, hit.window_ms, hit.cost, int(hit.enforce)]
    return keys, args


def parse_reply(reply: Sequence[Any], count: int) -> tuple[list[Usage], int]:
    values = [int(v) for v in reply]
    usages = [
        Usage(
            fits=values[i] == 1,
            remaining=values[i + 1],
            reset_ms=values[i + 2],
            wait_ms=None if values[i + 3] < 0 else values[i + 3],
        )
        for i in range(0, count * 4, 4)
    ]
    return usages, values[-1]


def slot_groups(hits: Sequence[Hit]) -> list[list[int]]:
    """Indices of hits grouped by hash tag (each group lands in one cluster slot)."""
    groups: dict[str, list[int]] = {}
    for index, hit in enumerate(hits):
        start = hit.key.find("{")
        tag = hit.key[start + 1 : hit.key.find("}", start)] if start >= 0 else hit.key
        groups.setdefault(tag, []).append(index)
    return list(groups.values())


def refund_args(hits: Sequence[Hit], stamp: int) -> tuple[list[str], list[Any]]:
    args: list[Any] = []
    for hit in hits:
        args += [_TAGS[hit.strategy], hit.cost, stamp]
    return [hit.key for hit in hits], args


# -- refused callers, remembered locally ------------------------------------------------------


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class BlockedCache:
    """Refusals remembered until the earliest moment one of the violated limits could change.

    Until then the same request from the same caller would be refused again with the same
    numbers (less the time that passed), so the answer is given without asking Redis.
    """

    def __init__(self, size: int = _BLOCKED_CACHE_SIZE) -> None:
        self.size = size
        self._entries: dict[tuple[Any, ...], tuple[int, int, list[Usage]]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def signature(hits: Sequence[Hit]) -> tuple[Any, ...]:
        return tuple((h.key, h.cost, h.enforce) for h in hits)

    def get(self, signature: tuple[Any, ...]) -> list[Usage] | None:
        entry = self._entries.get(signature)
        if entry is None:
            return None
        seen_at, until, usages = entry
        now = _monotonic_ms()
        if now >= until:
            self._entries.pop(signature, None)
            return None
        elapsed = now - seen_at
        return [
            Usage(
                u.fits,
                u.remaining,
                max(u.reset_ms - elapsed, 0),
                None if u.wait_ms is None else max(u.wait_ms - elapsed, 0),
            )
            for u in usages
        ]

    def remember(
        self, signature: tuple[Any, ...], hits: Sequence[Hit], usages: list[Usage]
    ) -> None:
        waits = [
            u.wait_ms for u, h in zip(usages, hits, strict=True) if h.enforce and not u.fits
        ]
        if not waits or None in waits:
            return
        with self._lock:
            if len(self._entries) >= self.size:
                self._entries.clear()
            now = _monotonic_ms()
            self._entries[signature] = (now, now + min(w for w in waits if w is not None), usages)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _refused(hits: Sequence[Hit], usages: list[Usage]) -> bool:
    return not all(u.fits for u, h in zip(usages, hits, strict=True) if h.enforce)


def _storage_error(uri: str, exc: Exception) -> StorageError:
    safe = uri.split("@")[-1]
    error = StorageError(f"Redis storage {safe} failed: {exc}")
    error.__cause__ = exc
    return error


# -- the storages -----------------------------------------------------------------------------


class RedisStorage:
    """Synchronous Redis storage (used under WSGI).

    Args:
        uri: ``redis://``, ``rediss://``, ``redis+unix://``, ``redis+cluster://``,
            ``redis+sentinel://`` or their ``valkey`` forms.
        key_prefix: the prefix ``reset()`` clears.
        **options: redis-py connection options: ``max_connections``, ``socket_timeout``,
            ``socket_connect_timeout``, ``username``, ``password``, ``ssl_*``, ...
    """

    def __init__(self, uri: str, *, key_prefix: str = "ratemw", **options: Any) -> None:
        validate(uri, options)
        self.uri = uri
        self.key_prefix = key_prefix
        self.cluster = _kind(uri) == "cluster"
        self.blocked = BlockedCache(options.get("blocked_cache_size", _BLOCKED_CACHE_SIZE))
        self.client = build_client(uri, options, asynchronous=False)

    def _script(self, keys: list[str], args: list[Any]) -> Any:
        try:
            return self.client.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
        except NoScriptError:  # after a restart or SCRIPT FLUSH: EVAL loads it again
            return self.client.eval(SCRIPT, len(keys), *keys, *args)

    def _run(self, hits: Sequence[Hit], mode: str) -> list[Usage]:
        groups = slot_groups(hits) if self.cluster else [list(range(len(hits)))]
        if len(groups) == 1:
            reply = self._script(*script_args(hits, mode))
            return parse_reply(reply, len(hits))[0]
        return self._run_groups(hits, groups, mode)

    def _run_groups(self, hits: Sequence[Hit], groups: list[list[int]], mode: str) -> list[Usage]:
        usages: list[Usage | None] = [None] * len(hits)
        taken: list[tuple[list[Hit], int]] = []
        for group in groups:
            part = [hits[i] for i in group]
            found, stamp = parse_reply(self._script(*script_args(part, mode)), len(part))
            for i, usage in zip(group, found, strict=True):
                usages[i] = usage
            if _refused(part, found):
                for taken_hits, taken_stamp in taken:
                    keys, args = refund_args(taken_hits, taken_stamp)
                    self.client.eval(REFUND, len(keys), *keys, *args)
                mode = "peek"
            elif mode == "acquire":
                taken.append((part, stamp))
        return [u for u in usages if u is not None]

    def acquire(self, hits: Sequence[Hit]) -> list[Usage]:
        signature = BlockedCache.signature(hits)
        cached = self.blocked.get(signature)
        if cached is not None:
            return cached
        try:
            usages = self._run(hits, "acquire")
        except RedisError as exc:
            raise _storage_error(self.uri, exc) from exc
        if _refused(hits, usages):
            self.blocked.remember(signature, hits, usages)
        return usages

    def peek(self, hits: Sequence[Hit]) -> list[Usage]:
        try:
            return self._run(hits, "peek")
        except RedisError as exc:
            raise _storage_error(self.uri, exc) from exc

    def clear(self, key: str) -> None:
        self.blocked.clear()
        try:
            self.client.delete(key)
        except RedisError as exc:
            raise _storage_error(self.uri, exc) from exc

    def reset(self) -> None:
        self.blocked.clear()
        try:
            keys = list(self.client.scan_iter(match=f"{self.key_prefix}:*", count=1000))
            for key in keys:
                self.client.delete(key)
        except RedisError as exc:
            raise _storage_error(self.uri, exc) from exc

    def close(self) -> None:
        self.client.close()


class AsyncRedisStorage:
    """Asynchronous Redis storage (used under ASGI); the twin of ``RedisStorage``."""

    def __init__(self, uri: str, *, key_prefix: str = "ratemw", **options: Any) -> None:
        validate(uri, options)
        self.uri = uri
        self.key_prefix = key_prefix
        self.cluster = _kind(uri) == "cluster"
        self.blocked = BlockedCache(options.get("blocked_cache_size", _BLOCKED_CACHE_SIZE))
        self.client = build_client(uri, options, asynchronous=True)
        self._ready = not self.cluster
        self._init_lock: asyncio.Lock | None = None

    async def _ensure_ready(self) -> None:
        # Many first requests at once must not each initialise the cluster client: it is not
        # safe to share half-initialised.
        if self._ready:
            return
        if self._init_lock is None:
            self._init_lock = asyncio.Lock()
        async with self._init_lock:
            if not self._ready:
                await self.client.initialize()
                self._ready = True

    async def _script(self, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self.client.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
        except NoScriptError:
            return await self.client.eval(SCRIPT, len(keys), *keys, *args)

    async def _run(self, hits: Sequence[Hit], mode: str) -> list[Usage]:
        await self._ensure_ready()
        groups = slot_groups(hits) if self.cluster else [list(range(len(hits)))]
        if len(groups) == 1:
            reply = await self._script(*script_args(hits, mode))
            return parse_reply(reply, len(hits))[0]
        return await self._run_groups(hits, groups, mode)

    async def _run_groups(
        self, hits: Sequence[Hit], groups: list[list[int]], mode: str
    ) -> list[Usage]:
        usages: list[Usage | None] = [None] * len(hits)
        taken: list[tuple[list[Hit], int]] = []
        for group in groups:
            part = [hits[i] for i in group]
            found, stamp = parse_reply(await self._script(*script_args(part, mode)), len(part))
            for i, usage in zip(group, found, strict=True):
                usages[i] = usage
            if _refused(part, found):
                for taken_hits, taken_stamp in taken:
                    keys, args = refund_args(taken_hits, taken_stamp)
                    await self.client.eval(REFUND, len(keys), *keys, *args)
                mode = "peek"
            elif mode == "acquire":
                taken.append((part, stamp))
        return [u for u in usages if u is not None]

    async def acquire(self, hits: Sequence[Hit]) -> list[Usage]:
        signature = BlockedCache.signature(hits)
        cached = self.blocked.get(signature)
        if cached is not None:
            return cached
        try:
            usages = await self._run(hits, "acquire")
        except RedisError as exc:
            raise _storage_error(self.uri, exc) from exc
        if _refused(hits, usages):
            self.blocked.remember(signature, hits, usages)
        return usages

    async def peek(self, hits: Sequence[Hit]) -> list[Usage]:
        try:
            return await self._run(hits, "peek")
        except RedisError as exc:
            raise _storage_error(self.uri, exc) from exc

    async def clear(self, key: str) -> None:
        self.blocked.clear()
        try:
            await self._ensure_ready()
            await self.client.delete(key)
        except RedisError as exc:
            raise _storage_error(self.uri, exc) from exc

    async def reset(self) -> None:
        self.blocked.clear()
        try:
            await self._ensure_ready()
            async for key in self.client.scan_iter(match=f"{self.key_prefix}:*", count=1000):
                await self.client.delete(key)
        except RedisError as exc:
            raise _storage_error(self.uri, exc) from exc

    async def aclose(self) -> None:
        await self.client.aclose()
