"""Redis storage (standalone, TLS, Unix socket, Cluster, Sentinel, Valkey): one round trip.

Every request's hits go to the server in one ``EVALSHA`` of ``acquire.lua``, which checks
them all, consumes them all or none, and returns the numbers for the headers, on the server's
clock. A caller who is refused is remembered locally until the earliest moment one of its
violated limits could change (or a reset), so a flood from one key costs Redis nothing.

The modules, from the storages down to the wire:

- ``storage.py``, ``astorage.py``: ``RedisStorage`` (WSGI) and ``AsyncRedisStorage`` (ASGI);
- ``config.py``: the URIs and options, parsed and validated once (``parse``, ``validate``);
- ``script.py`` and ``acquire.lua``: the script, its arguments and its answer;
- ``spans.py``: requests whose hits span Cluster slots (one call per slot, all or nothing);
- ``blocked.py``: refused callers remembered locally, and the reset mark that reaches every
  process; ``admin.py``: the administrative commands' pieces;
- ``faults.py``: what a failing call raises (``StorageError``, ``StorageCallError``);
- ``transport.py``: **the one seam to the wire**, chosen once per storage: ``"pipe"``
  (ratemw's own connections: ``pipe.py``, ``apipe.py``, sharing ``endpoint.py`` and
  ``resp.py``) or ``"redis-py"`` (``redispy.py``, ``cluster.py``, over ``clients.py``);
- ``pool.py``: bounded waits for a connection.

Failures are bounded: every command has a socket timeout (0.1 s by default), and a command is
never sent again once it may have run (it would count the request twice).
"""

from __future__ import annotations

from ratemw.storage.redis.astorage import AsyncRedisStorage
from ratemw.storage.redis.blocked import BlockedCache
from ratemw.storage.redis.clients import build_client
from ratemw.storage.redis.config import (
    DEFAULT_OPTIONS,
    OPTIONS,
    SCHEMES,
    TRANSPORTS,
    RedisConfig,
    parse,
    validate,
)
from ratemw.storage.redis.script import SCRIPT, SCRIPT_SHA, STRATEGIES, compose_script, serves
from ratemw.storage.redis.storage import RedisStorage
from ratemw.storage.redis.transport import AsyncScriptTransport, ScriptTransport

__all__ = [
    "DEFAULT_OPTIONS",
    "OPTIONS",
    "SCHEMES",
    "SCRIPT",
    "SCRIPT_SHA",
    "STRATEGIES",
    "TRANSPORTS",
    "AsyncRedisStorage",
    "AsyncScriptTransport",
    "BlockedCache",
    "RedisConfig",
    "RedisStorage",
    "ScriptTransport",
    "build_client",
    "compose_script",
    "parse",
    "serves",
    "validate",
]
