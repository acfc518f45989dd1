"""Redis storage (standalone, TLS, Unix socket, Cluster, Sentinel, Valkey): one round trip.

Every request's hits go to the server in one ``EVALSHA`` of ``acquire.lua``, which checks
them all, consumes them all or none, and returns the numbers for the headers, on the server's
clock. A caller who is refused is remembered locally until the earliest moment one of its
violated limits could change, so a flood from one key costs Redis nothing.

On a Redis Cluster, all of one caller's keys share a hash tag (the hashed identity) and so
one slot. A request whose limits count different identities (say, per user and per address)
spans slots; it then takes one script call per slot, consuming in turn and handing back what
it took if a later slot refuses, so it never over-admits.

Failures are bounded: every command has a socket timeout (0.1 s by default), a lost
connection is retried once (a pooled connection may have died with a restarted server), a
timed-out command never (the script may have run), and at most ``max_connections`` commands
are in flight per storage. A command queued for a free connection is not sent when one ahead
of it failed meanwhile, so no request waits for more than one timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

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

from ratemw._exceptions import ConfigurationError, StorageError
from ratemw.storage._base import CONCURRENCY, Hit, Usage

SCRIPT = resources.files("ratemw.storage").joinpath("acquire.lua").read_text("utf-8")
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode("utf-8")).hexdigest()
_TAGS = {
    "fixed-window": "fw",
    "moving-window": "mw",
    "sliding-window-counter": "sw",
    "gcra": "gc",
    CONCURRENCY: "cc",
}
STRATEGIES = frozenset(_TAGS)  # what acquire.lua counts by itself
_EXTENSIONS = "-- ratemw: strategies of your own are inserted here --"


def compose_script() -> tuple[str, str]:
    """``acquire.lua`` with the Lua of every registered strategy that has some, and its SHA1.

    A strategy of your own serves Redis when it has a ``lua`` attribute: Lua source that
    sets ``checks[name]``, ``consumes[name]`` and ``refunds[name]`` (see docs/strategies.md).
    """
    from ratemw.storage._strategies import STRATEGY_IMPLEMENTATIONS

    fragments = [
        lua
        for name, strategy in sorted(STRATEGY_IMPLEMENTATIONS.items())
        if name not in _TAGS and isinstance(lua := getattr(strategy, "lua", None), str)
    ]
    if not fragments:
        return SCRIPT, SCRIPT_SHA
    script = SCRIPT.replace(_EXTENSIONS, "\n".join([_EXTENSIONS, *fragments]), 1)
    return script, hashlib.sha1(script.encode("utf-8")).hexdigest()
_ERRORS = (RedisError, RedisClusterException)

SCHEMES = frozenset(
    f"{base}{suffix}"
    for base in ("redis", "valkey")
    for suffix in ("", "s", "+unix", "+cluster", "+sentinel")
)


def _positive_number(value: Any) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(value)
    return number


def _count(minimum: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, (float, bool)):
            raise ValueError(value)
        number = int(value)
        if number < minimum:
            raise ValueError(value)
        return number

    return convert


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _cert_reqs(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ("none", "optional", "required"):
        raise ValueError(value)
    return text


# Every option, in the storage options or the URI's query string, with what it must be.
OPTIONS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "socket_timeout": (_positive_number, "a positive number of seconds"),
    "socket_connect_timeout": (_positive_number, "a positive number of seconds"),
    "pool_timeout": (_positive_number, "a positive number of seconds"),
    "max_connections": (_count(1), "a positive integer"),
    "health_check_interval": (_count(0), "a whole number of seconds, 0 for none"),
    "db": (_count(0), "a database number >= 0"),
    "blocked_cache_size": (_count(0), "a number of callers >= 0 (0 turns the cache off)"),
    "username": (str, "a string"),
    "password": (str, "a string"),
    "sentinel_username": (str, "a string"),
    "sentinel_password": (str, "a string"),
    "ssl_certfile": (str, "a file path"),
    "ssl_keyfile": (str, "a file path"),
    "ssl_ca_certs": (str, "a file path"),
    "ssl_cert_reqs": (_cert_reqs, "'none', 'optional' or 'required'"),
    "ssl_check_hostname": (_flag, "true or false"),
}
# 0.1 s: an unhealthy server costs a request at most a tenth of a second (and nothing once
# the limiter's circuit breaker is open), while a healthy one on a busy host never times out.
# What times a command out is as often the event loop as the server: a reply that arrived
# is read only when the loop gets to it, so under load a tight timeout fails healthy requests.
# Measured on a 2-core machine (uvicorn, 1 worker, Redis and the load generator on the same
# cores): 20 ms failed 2% of requests at 32 concurrent connections and all of them at 256;
# 50 ms failed the first request of each of 256 connections arriving at once; 100 ms failed
# none, with two more processes spinning on both cores.
DEFAULT_OPTIONS: dict[str, Any] = {
    "socket_timeout": 0.1,
    "socket_connect_timeout": 0.1,
    "pool_timeout": 1.0,
    "max_connections": 16,
    "blocked_cache_size": 10_000,
}
_OURS = ("pool_timeout", "blocked_cache_size", "sentinel_username", "sentinel_password")


# -- URIs and options ------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisConfig:
    """A parsed, validated storage URI with its options."""

    uri: str
    kind: str  # "single", "unix", "cluster" or "sentinel"
    tls: bool
    hosts: list[tuple[str, int]]
    path: str  # the socket path ("unix"), the service name ("sentinel")
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def safe_uri(self) -> str:
        """The URI without credentials (for messages and logs)."""
        scheme, rest = self.uri.split("://", 1)
        return f"{scheme}://{rest.rsplit('@', 1)[-1].split('?', 1)[0]}"

    def client_options(self) -> dict[str, Any]:
        """Options for redis-py's clients (ours left out)."""
        return {k: v for k, v in self.options.items() if k not in _OURS}


def _bad(uri: str, what: str) -> ConfigurationError:
    return ConfigurationError(f"invalid Redis storage URI {_redacted(uri)!r}: {what}")


def _redacted(uri: str) -> str:
    scheme, _, rest = uri.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if at and ":" in userinfo:
        return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hosts}"
    return uri


def _hosts(uri: str, netloc: str, default_port: int) -> list[tuple[str, int]]:
    hosts = []
    for part in netloc.rsplit("@", 1)[-1].split(","):
        if part.startswith("["):  # [::1]:6379
            host, _, port = part[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = part.partition(":")
        if not host:
            raise _bad(uri, f"no host in {part!r}")
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise _bad(uri, f"invalid port {port!r}")
        hosts.append((host, int(port) if port else default_port))
    return hosts


def _convert_options(uri: str, raw: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(raw) - set(OPTIONS))
    if unknown:
        raise ConfigurationError(
            f"unknown Redis storage option(s) {unknown!r} for {_redacted(uri)!r}; "
            f"known: {sorted(OPTIONS)}"
        )
    options = {}
    for name, value in raw.items():
        convert, expected = OPTIONS[name]
        try:
            options[name] = convert(value)
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"invalid Redis storage option {name}={value!r}: expected {expected}"
            ) from None
    return options


def parse(uri: str, options: dict[str, Any] | None = None) -> RedisConfig:
    """Parse a ``limits``-style Redis URI; ``ConfigurationError`` names what is wrong.

    Options come from the URI's query string (``?socket_timeout=1``) and from ``options``;
    the latter win.
    """
    if not isinstance(uri, str) or "://" not in uri:
        raise ConfigurationError(f"invalid Redis storage URI {uri!r}: expected 'redis://host'")
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise _bad(uri, f"unknown scheme {scheme!r}; expected one of {sorted(SCHEMES)}")
    parts = urlsplit(uri)
    merged = {**DEFAULT_OPTIONS, **_convert_options(uri, dict(parse_qsl(parts.query)))}
    merged.update(_convert_options(uri, dict(options or {})))
    if parts.username:
        merged.setdefault("username", unquote(parts.username))
    if parts.password:
        merged.setdefault("password", unquote(parts.password))
    tls = scheme.split("+")[0] in ("rediss", "valkeys")
    ssl_options = sorted(name for name in merged if name.startswith("ssl_"))
    if ssl_options and not tls:
        raise _bad(uri, f"TLS options {ssl_options} need a rediss:// or valkeys:// URI")
    path = parts.path.strip("/")
    if scheme.endswith("+unix"):
        if not parts.path:
            raise _bad(uri, "no socket path, e.g. 'redis+unix:///run/redis.sock'")
        return RedisConfig(uri, "unix", False, [], parts.path, merged)
    kind = scheme.split("+")[1] if "+" in scheme else "single"
    hosts = _hosts(uri, parts.netloc, 26379 if kind == "sentinel" else 6379)
    if kind == "sentinel":
        service, _, db = path.partition("/")
        if not service:
            raise _bad(uri, "no service name, e.g. 'redis+sentinel://localhost:26379/mymaster'")
        path = service
    else:
        db = path
    if db:
        if not db.isdigit():
            raise _bad(uri, f"invalid database number {db!r}")
        if kind == "cluster":
            raise _bad(uri, "a Redis Cluster has only database 0")
        merged.setdefault("db", int(db))
    if kind == "single" and len(hosts) > 1:
        raise _bad(uri, "several hosts: use redis+cluster:// or redis+sentinel://")
    return RedisConfig(uri, kind, tls, hosts, path, merged)


def validate(uri: str, options: dict[str, Any]) -> None:
    """Refuse a malformed Redis URI or an unknown or invalid option (at start-up)."""
    parse(uri, options)


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


# -- the script's arguments and answer --------------------------------------------------------


def serves(strategy: str) -> bool:
    """Whether the Redis storage can count ``strategy`` (built in, or registered with Lua)."""
    if strategy in _TAGS:
        return True
    from ratemw.storage._strategies import STRATEGY_IMPLEMENTATIONS

    return isinstance(getattr(STRATEGY_IMPLEMENTATIONS.get(strategy), "lua", None), str)


def _tag(hit: Hit) -> str:
    tag = _TAGS.get(hit.strategy)
    if tag is None and serves(hit.strategy):
        return hit.strategy  # a strategy of your own goes by its name
    if tag is None:
        raise StorageError(
            f"the Redis storage cannot count strategy {hit.strategy!r}; "
            f"it counts {sorted(STRATEGIES)}"
        )
    return tag


def script_args(hits: Sequence[Hit], mode: str, stamp: int = 0) -> tuple[list[str], list[Any]]:
    """``KEYS`` and ``ARGV`` of ``acquire.lua`` for ``hits``."""
    keys = [hit.key for hit in hits]
    args: list[Any] = [f"{mode} {stamp}"]
    for hit in hits:
        extra = hit.token if hit.strategy == CONCURRENCY else hit.burst
        args.append(
            f"{_tag(hit)} {hit.amount} {hit.window_ms} {hit.cost} {int(hit.enforce)} {extra}"
        )
    return keys, args


def parse_reply(reply: Sequence[Any], count: int) -> tuple[list[Usage], int]:
    """The script's answer: one ``Usage`` per hit, and the time of the decision."""
    now = int(reply[-1])
    usages = []
    for i in range(0, count * 4, 4):  # the script answers integers: no conversion needed
        fits, remaining, reset, wait = reply[i : i + 4]
        usages.append(Usage(fits == 1, remaining, reset, wait if wait >= 0 else None, now))
    return usages, now


def slot_groups(hits: Sequence[Hit]) -> list[list[int]]:
    """Indices of hits grouped by hash tag (each group lands in one cluster slot)."""
    groups: dict[str, list[int]] = {}
    for index, hit in enumerate(hits):
        start = hit.key.find("{")
        end = hit.key.find("}", start + 1)
        tag = hit.key[start + 1 : end] if 0 <= start < end - 1 else hit.key
        groups.setdefault(tag, []).append(index)
    return list(groups.values())


def _refused(hits: Sequence[Hit], usages: Sequence[Usage]) -> bool:
    # A plain loop: this runs on every request.
    for usage, hit in zip(usages, hits, strict=True):  # noqa: SIM110
        if not usage.fits and hit.enforce:
            return True
    return False


def _unconsumed(usage: Usage, hit: Hit) -> Usage:
    """The usage of a hit that fitted but was handed back: its units are free again."""
    if not usage.fits:
        return usage
    units = 1 if hit.strategy == CONCURRENCY else hit.cost
    return Usage(True, usage.remaining + units, usage.reset_ms, 0, usage.stamp_ms)


Calls = Generator[tuple[list[str], list[Any]], Any, list[Usage]]


def slot_by_slot(hits: Sequence[Hit], groups: list[list[int]], mode: str) -> Calls:
    """The calls of a request whose hits span cluster slots (one script call per slot).

    A generator: it yields each call's ``(keys, args)`` and is sent the reply. Slots are
    consumed in turn; when one refuses, what the earlier ones took is handed back and the
    rest are only peeked at, so the request consumes nothing anywhere (all-or-nothing). The
    first slot's server time is the clock of the whole request, so every hit carries one
    stamp (what a later ``refund(hits, stamp)`` needs).
    """
    usages: list[Usage] = [Usage(True, 0, 0, 0)] * len(hits)
    taken: list[int] = []
    stamp = 0
    refused = False
    for group in groups:
        part = [hits[i] for i in group]
        reply = yield script_args(part, "peek" if refused else mode, stamp)
        found, stamp = parse_reply(reply, len(part))
        for i, usage in zip(group, found, strict=True):
            usages[i] = usage
        if refused:
            continue
        if _refused(part, found):
            refused = True
            for indices in _by_slot(hits, taken):
                yield script_args([hits[i] for i in indices], "undo", stamp)
            for i in taken:
                usages[i] = _unconsumed(usages[i], hits[i])
        elif mode == "acquire":
            # Only the hits that fitted were consumed (a shadow hit without room was not).
            taken += [i for i, u in zip(group, found, strict=True) if u.fits]
    return usages


def _by_slot(hits: Sequence[Hit], indices: list[int]) -> list[list[int]]:
    chosen = [hits[i] for i in indices]
    return [[indices[j] for j in group] for group in slot_groups(chosen)]


def refund_calls(hits: Sequence[Hit], stamp: int, mode: str) -> list[tuple[list[str], list[Any]]]:
    """The script calls handing back what ``hits`` took at ``stamp`` (one per slot)."""
    return [script_args([hits[i] for i in group], mode, stamp) for group in slot_groups(hits)]


# -- refused callers, remembered locally ------------------------------------------------------


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class BlockedCache:
    """Refusals remembered until the earliest moment one of the violated limits could change.

    Until then the same request from the same caller would be refused again with the same
    numbers (less the time that passed), so the answer is given without asking Redis. Only
    durations are measured locally (on the monotonic clock); the numbers come from Redis.
    """

    def __init__(self, size: int = DEFAULT_OPTIONS["blocked_cache_size"]) -> None:
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
        violated = [(u, h) for u, h in zip(usages, hits, strict=True) if h.enforce and not u.fits]
        # A concurrency slot may free at any moment: its "wait" is a guess, not a bound.
        if not violated or self.size == 0 or any(h.strategy == CONCURRENCY for _, h in violated):
            return
        waits = [u.wait_ms for u, _ in violated]
        # A cost that can never fit is not remembered: the limit may be raised meanwhile.
        known = [w for w in waits if w is not None]
        if len(known) < len(waits) or min(known) <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.size:
                self._entries.clear()
            now = _monotonic_ms()
            self._entries[signature] = (now, now + min(known), usages)

    def __len__(self) -> int:
        return len(self._entries)

    def forget(self, keys: set[str]) -> None:
        """Drop the refusals that involve ``keys`` (units were handed back on them)."""
        if not self._entries:
            return
        with self._lock:
            for signature in list(self._entries):
                if any(key in keys for key, _, _ in signature):
                    del self._entries[signature]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


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
    """At most ``size`` threads at a time hold a slot; waiters are served in arrival order.

    ``threading.Semaphore`` lets a thread that just released take the slot again ahead of
    the ones waiting: a thread pool larger than the pool of connections then starves some
    requests until ``pool_timeout``, on a perfectly healthy server. Here ``release`` hands
    the slot straight to the longest waiter.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._lock = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()

    def acquire(self, timeout: float) -> bool:
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return True
            waiter = threading.Lock()
            waiter.acquire()
            self._waiters.append(waiter)
        if waiter.acquire(timeout=timeout):
            return True  # handed over by release()
        with self._lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                return False
        return True  # handed over between the timeout and this thread's taking the lock

    def busy(self) -> bool:
        """Whether ``acquire`` would wait (a hint: another thread may change it)."""
        return not self._free or bool(self._waiters)

    def release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._free += 1


def _storage_error(config: RedisConfig, exc: BaseException) -> StorageError:
    error = StorageError(f"Redis storage {config.safe_uri} failed: {exc!r}")
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
        self._failures = 0  # commands lost to timeouts and broken connections (see _FailedAhead)
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

    def _script(self, keys: list[str], args: list[Any]) -> Any:
        failures = self._failures
        waits = self._slots.busy()  # every connection busy: wait, but not for ever
        if not self._slots.acquire(self.config.options["pool_timeout"]):
            raise redis.ConnectionError("no free Redis connection (pool_timeout)")
        if waits and self._failures != failures:
            self._slots.release()
            raise _FailedAhead()
        try:
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
            return parse_reply(self._script(*script_args(hits, mode)), len(hits))[0]
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
        signature = BlockedCache.signature(hits)
        cached = self.blocked.get(signature)
        if cached is not None:
            return cached
        try:
            usages = self._run(hits, "acquire")
        except _ERRORS as exc:
            raise _storage_error(self.config, exc) from exc
        if _refused(hits, usages):
            self.blocked.remember(signature, hits, usages)
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
        client, closers = self._client, self._closers
        self._client, self._closers = None, []
        for each in (client, *closers):
            if each is not None:
                each.close()


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
        if not self._ready:
            await self._ensure_ready()
        groups = slot_groups(hits) if self.cluster else []
        if len(groups) <= 1:
            return parse_reply(await self._script(*script_args(hits, mode)), len(hits))[0]
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
        signature = BlockedCache.signature(hits)
        cached = self.blocked.get(signature)
        if cached is not None:
            return cached
        try:
            usages = await self._run(hits, "acquire")
        except _ERRORS as exc:
            raise _storage_error(self.config, exc) from exc
        if _refused(hits, usages):
            self.blocked.remember(signature, hits, usages)
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
        for each in (self.client, *self._closers):
            await each.aclose()
        self._closers = []
        self._ready = not self.cluster
