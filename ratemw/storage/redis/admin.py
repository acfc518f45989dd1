"""The administrative commands' pieces, shared by both storages: what ``reset`` deletes, the
reset mark ``clear`` and ``reset`` leave for other processes (``blocked.py``), what
``check`` peeks at.

These commands go through redis-py's client, whatever the storage's transport: they are not
on any request's path.
"""

from __future__ import annotations

from typing import Any

from ratemw.storage.base import Hit

__all__ = ["MARK_RESET", "RESET_BATCH", "check_hits", "reset_time", "resets_key", "scan_pattern"]

RESET_BATCH = 500  # keys deleted per DEL while resetting

# Leaves the server's time (ms) under KEYS[1], unless a later reset left a later one, and
# returns it. Run after the deletions: any refusal Redis decided before it may be stale.
MARK_RESET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('GET', KEYS[1])) or 0
if now > last then
  redis.call('SET', KEYS[1], string.format('%d', now))
  return now
end
return last
"""


def resets_key(prefix: str) -> str:
    """Where the reset mark of a key prefix lives (its own hash tag: one slot on a Cluster)."""
    return f"{prefix}:{{resets}}"


def reset_time(value: Any) -> int:
    """The reset mark as read (``None`` before any reset), in server ms; ``ValueError`` if it
    is not one."""
    return 0 if value is None else int(value)


def scan_pattern(prefix: str) -> str:
    """A SCAN pattern for every key under ``prefix`` (glob characters escaped)."""
    escaped = "".join("\\" + c if c in "*?[]\\" else c for c in prefix)
    return f"{escaped}:*"


def check_hits(prefix: str) -> list[Hit]:
    """What ``check()`` peeks at: a key nobody counts (a peek writes nothing)."""
    return [Hit(f"{prefix}:{{ratemw-check}}:ping", 1, 1000, 1, "fixed-window")]
