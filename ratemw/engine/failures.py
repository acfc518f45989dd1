"""Failures of user callables, logged once per incident; what each failing callable means.

Every callable a user gives ratemw (key, limit, cost, ``exempt_when``, ...) may raise or
return garbage for some request, often because of what a caller sent. Each has a ``Role``:
what a valid result is and what ratemw does instead. A caller who can make a callable fail
must not be able to write a line to the log per request: ``FailureLog`` logs the first
failure of an incident and then at most a line a minute.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ratemw._bounded import Bounded

__all__ = [
    "BILLING_DAY",
    "CODE_COST",
    "CODE_KEY",
    "COST",
    "DEDUCT",
    "EXEMPT",
    "FILTER",
    "HOOK",
    "KEY",
    "LIMIT",
    "MESSAGE",
    "RATE",
    "STORAGE_CALL",
    "FailureLog",
    "Role",
]

logger = logging.getLogger("ratemw")

#: A callable failing again within this many milliseconds of its last failure belongs to
#: the same incident; and while an incident lasts, at most one line is logged this often.
FAILURE_INTERVAL_MS = 60_000
_MAX_CALLABLES = 256  # callables are configured, not made per request: a safety cap


@dataclass(frozen=True)
class Role:
    """What a user callable is for, and what ratemw does instead when it fails.

    ``expected`` says what a valid result is (for a callable that returns the wrong thing);
    ``consequence`` what happens to the request instead.
    """

    name: str  # "key function", "cost", ...
    event: str  # the structured log event
    field: str  # the structured field that names the callable
    expected: str
    consequence: str


KEY = Role(
    "key function",
    "key_function_failed",
    "key_function",
    "a non-empty string",
    "counting the request by client address",
)
LIMIT = Role(
    "limit callable",
    "limit_callable_failed",
    "function",
    "a limit string such as '5/minute'",
    "applying its fallback limits",
)
COST = Role("cost", "cost_failed", "function", "a whole number >= 1", "the request costs 1")
EXEMPT = Role("exempt_when", "exempt_when_failed", "function", "True or False", "the limit applies")
FILTER = Role(
    "request_filter", "request_filter_failed", "function", "True or False", "the request is limited"
)
DEDUCT = Role(
    "deduct_when", "deduct_when_failed", "function", "True or False", "the request counts"
)
MESSAGE = Role(
    "error_message", "error_message_failed", "function", "a string", "the default detail is sent"
)
CODE_KEY = Role(
    "key given to Limiter.hit",
    "hit_key_failed",
    "function",
    "a non-empty string",
    "counting the call in the one bucket of keys that name nobody",
)
CODE_COST = Role(
    "cost given to Limiter.hit",
    "hit_cost_failed",
    "function",
    "a whole number >= 1",
    "the call costs 1",
)
BILLING_DAY = Role(
    "billing_day", "billing_day_failed", "function", "a day 1-31", "months are counted from the 1st"
)
RATE = Role(
    "rate callable",
    "rate_callable_failed",
    "function",
    "a rate such as '5/m', a (count, seconds) pair, or None",
    "the request is limited",
)
HOOK = Role("hook", "hook_failed", "function", "anything", "the request goes on")
STORAGE_CALL = Role(
    "storage",
    "storage_call_failed",
    "storage",
    "an answer",
    "the request gets the failure mode (not counted as an outage)",
)


class _Incident:
    """One callable's failures: when the last one happened, when a line was last logged."""

    __slots__ = ("last_ms", "logged_ms", "unlogged")

    def __init__(self) -> None:
        self.last_ms: float = float("-inf")
        self.logged_ms: float = float("-inf")
        self.unlogged = 0


def _short(value: Any) -> str:
    """A returned value for a log line: its repr, cut short (it may come from a caller)."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} with a failing repr>"
    return text if len(text) <= 80 else text[:77] + "..."


class FailureLog:
    """Logs failures of user callables once per incident, not once per request.

    A caller who can make a callable raise (or return garbage) could otherwise write a
    traceback to the log with every request. Per callable: the first failure of an incident
    is logged (with its traceback, when it raised); while failures go on, at most one line
    per ``interval_ms`` says how many were not logged since the previous line. An incident
    ends when ``interval_ms`` passes without a failure. Every line is a WARNING with
    ``record.ratemw = {"event": ..., <field>: repr(callable), "suppressed": N}``.

    Args:
        clock: the time in milliseconds (the limiter's clock; monotonic by default).
        interval_ms: the incident gap and the shortest interval between two lines.
    """

    def __init__(self, clock: Callable[[], float], interval_ms: int = FAILURE_INTERVAL_MS) -> None:
        self.clock = clock
        self.interval_ms = interval_ms
        self._incidents: Bounded[tuple[str, int], _Incident] = Bounded(_MAX_CALLABLES)
        self._lock = threading.Lock()

    def __call__(self, role: Role, fn: Any, error: BaseException | None, value: Any = None) -> None:
        """Record one failure of ``fn`` (it raised ``error``, or returned ``value``)."""
        with contextlib.suppress(Exception):  # a callable with a broken repr() must not 500
            self._record(role, fn, error, value)

    def _record(self, role: Role, fn: Any, error: BaseException | None, value: Any) -> None:
        due = self._due(role, fn)
        if due is None:
            return
        new_incident, suppressed = due
        fields = {"ratemw": {"event": role.event, role.field: repr(fn), "suppressed": suppressed}}
        what = "raised" if error is not None else f"returned {_short(value)}, not {role.expected}"
        if new_incident:
            logger.warning(
                "%s %r %s; %s%s",
                role.name,
                fn,
                what,
                role.consequence,
                f" ({suppressed} earlier failures were not logged)" if suppressed else "",
                exc_info=error,
                extra=fields,
            )
        else:
            logger.warning(
                "%s %r is still failing: %d failures not logged since the last line, %s; "
                "latest: %s",
                role.name,
                fn,
                suppressed,
                role.consequence,
                repr(error) if error is not None else what,
                extra=fields,
            )

    def _due(self, role: Role, fn: Any) -> tuple[bool, int] | None:
        """``None`` to stay quiet, else (whether an incident starts, failures not logged)."""
        now = self.clock()
        interval = self.interval_ms
        with self._lock:
            incident = self._incidents.get((role.event, id(fn)))
            if incident is None:
                incident = self._incidents.put((role.event, id(fn)), _Incident())
            # A clock that went back (a wall clock) counts as time passed, never as silence.
            new_incident = not (0 <= now - incident.last_ms < interval)
            incident.last_ms = now
            if not new_incident and 0 <= now - incident.logged_ms < interval:
                incident.unlogged += 1
                return None
            suppressed, incident.unlogged = incident.unlogged, 0
            incident.logged_ms = now
            return new_incident, suppressed
