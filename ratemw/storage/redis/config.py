"""Redis storage URIs and options: parsed and validated once, at start-up.

The URIs are those ``limits`` understands (``redis://``, ``rediss://``, ``redis+unix://``,
``redis+cluster://``, ``redis+sentinel://`` and their ``valkey`` forms); options come from
the query string and from the storage options, and every bad one raises
``ConfigurationError`` naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ratemw._redact import redact_uri
from ratemw.errors import ConfigurationError

__all__ = [
    "DEFAULT_OPTIONS",
    "OPTIONS",
    "SCHEMES",
    "TRANSPORTS",
    "RedisConfig",
    "parse",
    "validate",
]

# The Redis storage's URI schemes (``storage_scheme`` in ``ratemw.storage`` reads them here).
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


# How the per-request script reaches Redis (``transport.py``): ratemw's own connections, or
# redis-py's client. Cluster and Sentinel need redis-py's topology: only "redis-py" serves them.
TRANSPORTS = ("pipe", "redis-py")
_SINGLE = ("single", "unix")


def _transport(value: Any) -> str:
    if value not in TRANSPORTS:
        raise ValueError(value)
    return str(value)


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
    "transport": (_transport, "'pipe' (ratemw's own connections) or 'redis-py'"),
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
_OURS = (
    "pool_timeout",
    "blocked_cache_size",
    "sentinel_username",
    "sentinel_password",
    "transport",
)


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
    def transport(self) -> str:
        """How scripts reach Redis: ``"pipe"`` or ``"redis-py"`` (see ``TRANSPORTS``)."""
        return str(self.options["transport"])

    @property
    def single(self) -> bool:
        """One server, over TCP, TLS or a Unix socket (not a Cluster, not Sentinel)."""
        return self.kind in _SINGLE

    @property
    def address(self) -> tuple[str, int] | str:
        """Where a single server listens: ``(host, port)``, or its socket path."""
        return self.path if self.kind == "unix" else self.hosts[0]

    @property
    def safe_uri(self) -> str:
        """The URI without credentials (for messages and logs)."""
        scheme, rest = self.uri.split("://", 1)
        return f"{scheme}://{rest.rsplit('@', 1)[-1].split('?', 1)[0]}"

    def client_options(self) -> dict[str, Any]:
        """Options for redis-py's clients (ours left out)."""
        return {k: v for k, v in self.options.items() if k not in _OURS}


def _bad(uri: str, what: str) -> ConfigurationError:
    return ConfigurationError(f"invalid Redis storage URI {redact_uri(uri)!r}: {what}")


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
            f"unknown Redis storage option(s) {unknown!r} for {redact_uri(uri)!r}; "
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
        return RedisConfig(uri, "unix", False, [], parts.path, _transport_for(uri, "unix", merged))
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
    return RedisConfig(uri, kind, tls, hosts, path, _transport_for(uri, kind, merged))


def _transport_for(uri: str, kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the transport settled: ``"pipe"`` for a single server unless asked
    otherwise, ``"redis-py"`` for Cluster and Sentinel (the only one that serves them)."""
    chosen = options.setdefault("transport", "pipe" if kind in _SINGLE else "redis-py")
    if chosen == "pipe" and kind not in _SINGLE:
        raise _bad(
            uri,
            f"transport 'pipe' serves a single server (redis://, rediss://, redis+unix://); "
            f"a {kind} deployment's scripts go through redis-py: leave transport out or set "
            "it to 'redis-py'",
        )
    return options


def validate(uri: str, options: dict[str, Any]) -> None:
    """Refuse a malformed Redis URI or an unknown or invalid option (at start-up)."""
    parse(uri, options)
