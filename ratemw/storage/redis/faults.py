"""What a Redis storage raises when a call fails: a ``StorageError``, raised from the backend's.

Either an outage (no answer, a timeout, a server that says it is unwell: ``LOADING``,
``READONLY``, ``CLUSTERDOWN``, ...), which the limiter's circuit breaker counts; or a
``StorageCallError``, where the server answered but this one call was at fault (the script
refused its arguments, or the reply does not fit it), which the breaker does not count.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.exceptions import ClusterCrossSlotError, RedisClusterException, RedisError, ResponseError

from ratemw._redact import describe_error
from ratemw.errors import StorageCallError, StorageError
from ratemw.storage.base import Hit
from ratemw.storage.redis.config import RedisConfig
from ratemw.storage.redis.script import UnfitReply

__all__ = ["ADMIN_FAILURES", "FAILURES", "call_fault", "describe_hits", "storage_error"]

_ERRORS = (RedisError, RedisClusterException)
# What a script call may raise: the backend's errors, and a reply that does not fit the call.
FAILURES = (*_ERRORS, UnfitReply)
# The administrative commands go through redis-py, which may fail to make sense of a reply
# with a ValueError or TypeError of its own: a storage failure all the same.
ADMIN_FAILURES = (*_ERRORS, ValueError, TypeError)


def storage_error(
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


# Error codes of a server that is unwell (or of a deployment that cannot serve anyone), not of
# one call: the circuit breaker counts these.
_OUTAGE_CODES = frozenset({
    "LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "OOM", "BUSY", "TRYAGAIN",
    "NOREPLICAS", "MOVED", "ASK", "MISCONF", "NOAUTH", "WRONGPASS", "NOPERM", "NOSCRIPT",
    "UNKILLABLE", "EXECABORT",
})  # fmt: skip
# What a script error caused by the call's data says (Redis 7 and earlier).
_CALL_MARKS = ("ratemw:", "user_script:", "Error running script", "WRONGTYPE")


def call_fault(error: BaseException) -> bool:
    """Whether a backend error is the call's own: the server answered, and refused the call.

    True for the script's refusal of an argument (``ratemw: ...``), any other Lua error in
    the script (a key holding the wrong type of value, data it cannot count), and keys of
    several cluster slots in one call. False for everything that says the server, not the
    call, is unwell (``LOADING``, ``READONLY``, ``CLUSTERDOWN``, ``OOM``, ``BUSY``, ...), for
    lost connections and timeouts, and for errors nobody expected.
    """
    if isinstance(error, ClusterCrossSlotError):
        return True
    if type(error) is not ResponseError:  # redis-py's subclasses name server states
        return False
    text = str(error)
    if text.split(" ", 1)[0] in _OUTAGE_CODES or "SCRIPT KILL" in text:  # a busy server
        return False
    return text.startswith("CROSSSLOT") or any(mark in text for mark in _CALL_MARKS)


def describe_hits(hits: Sequence[Hit], most: int = 4) -> str:
    """What a call sent, for messages: keys (hashed identities) and numbers, no secrets."""
    shown = [
        f"{hit.key!r} ({hit.strategy} {hit.amount!r} per {hit.window_ms!r} ms, "
        f"cost {hit.cost!r}, enforce {hit.enforce!r}, burst {hit.burst!r})"
        for hit in hits[:most]
    ]
    if len(hits) > most:
        shown.append(f"and {len(hits) - most} more")
    return "[" + ", ".join(shown) + "]" if shown else "[]"
