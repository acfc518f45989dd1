"""Telling people about decisions: hooks and logs. Generators, like the core they serve."""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ratemw.policy.decision import Decision, denial_headers, problem_body
from ratemw.errors import RateLimitExceeded

if TYPE_CHECKING:
    from ratemw.limiter import Limiter

logger = logging.getLogger("ratemw")

#: A key function failing again within this many milliseconds of its last failure belongs to
#: the same incident; and while an incident lasts, at most one line is logged this often.
KEY_FAILURE_INTERVAL_MS = 60_000
_MAX_CALLABLES = 256  # callables are configured, not made per request: a safety cap


def call_hook(
    failures: FailureLog, hook: Any, *args: Any
) -> Generator[Any, Any, None]:
    """Run a user hook; a failing hook is logged (once per incident) and never breaks the
    request."""
    if hook is None:
        return
    try:
        result = hook(*args)
        if inspect.isawaitable(result):
            yield result
    except Exception as error:
        failures(HOOK, hook, error)


def exceeded_for(
    limiter: Limiter, decision: Decision, method: str, path: str, detail: str | None = None
) -> RateLimitExceeded:
    now_s = -(-limiter.clock_ms() // 1000)  # rounded up: an epoch reset is never early
    return RateLimitExceeded(
        decision,
        method=method,
        path=path,
        headers=denial_headers(decision, limiter.header_modes, now_s),
        body=problem_body(decision, method, path, detail),
    )


def near_limit(limiter: Limiter, request: Any, decision: Decision) -> Generator[Any, Any, None]:
    """``on_near_limit`` once, when this request takes a policy's usage past the threshold."""
    if not decision.allowed:
        return
    for policy in decision.policies:
        threshold = max(1, -(-policy.quota * limiter.near_limit_ratio_permille // 1000))
        used_after = policy.quota - policy.remaining
        if used_after - policy.cost < threshold <= used_after:
            yield from call_hook(limiter.failures, limiter.on_near_limit, request, policy)


def shadow_breach(
    limiter: Limiter, request: Any, decision: Decision, method: str, path: str
) -> Generator[Any, Any, None]:
    """Shadow limits that would have refused: logged, and ``on_breach`` with ``exc.shadow``."""
    for policy in decision.shadow_violated:
        logger.info(
            "shadow limit exceeded (not enforced): %s on %s %s",
            policy.text,
            method,
            path,
            extra={"ratemw": {"event": "shadow_limit_exceeded", "policy": policy.name}},
        )
    shadow = Decision(
        allowed=False,
        policies=decision.shadow_violated,
        retry_after=max((p.reset or 0) for p in decision.shadow_violated) or None,
    )
    exceeded = exceeded_for(limiter, shadow, method, path)
    exceeded.shadow = True
    yield from call_hook(limiter.failures, limiter.on_breach, request, exceeded)


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


KEY = Role("key function", "key_function_failed", "key_function", "a non-empty string",
           "counting the request by client address")
LIMIT = Role("limit callable", "limit_callable_failed", "function",
             "a limit string such as '5/minute'", "applying its fallback limits")
COST = Role("cost", "cost_failed", "function", "a whole number >= 1",
            "the request costs 1")
EXEMPT = Role("exempt_when", "exempt_when_failed", "function", "True or False",
              "the limit applies")
FILTER = Role("request_filter", "request_filter_failed", "function", "True or False",
              "the request is limited")
DEDUCT = Role("deduct_when", "deduct_when_failed", "function", "True or False",
              "the request counts")
MESSAGE = Role("error_message", "error_message_failed", "function", "a string",
               "the default detail is sent")
HOOK = Role("hook", "hook_failed", "function", "anything", "the request goes on")
STORAGE_CALL = Role("storage", "storage_call_failed", "storage", "an answer",
                    "the request gets the failure mode (not counted as an outage)")


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

    def __init__(
        self, clock: Callable[[], float], interval_ms: int = KEY_FAILURE_INTERVAL_MS
    ) -> None:
        self.clock = clock
        self.interval_ms = interval_ms
        self._incidents: dict[tuple[str, int], _Incident] = {}
        self._lock = threading.Lock()

    def __call__(
        self, role: Role, fn: Any, error: BaseException | None, value: Any = None
    ) -> None:
        """Record one failure of ``fn`` (it raised ``error``, or returned ``value``)."""
        with contextlib.suppress(Exception):  # a callable with a broken repr() must not 500
            self._record(role, fn, error, value)

    def _record(self, role: Role, fn: Any, error: BaseException | None, value: Any) -> None:
        due = self._due(role, fn)
        if due is None:
            return
        new_incident, suppressed = due
        fields = {"ratemw": {"event": role.event, role.field: repr(fn), "suppressed": suppressed}}
        what = (
            "raised" if error is not None
            else f"returned {_short(value)}, not {role.expected}"
        )
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
                if len(self._incidents) >= _MAX_CALLABLES:
                    self._incidents.clear()
                incident = self._incidents[(role.event, id(fn))] = _Incident()
            # A clock that went back (a wall clock) counts as time passed, never as silence.
            new_incident = not (0 <= now - incident.last_ms < interval)
            incident.last_ms = now
            if not new_incident and 0 <= now - incident.logged_ms < interval:
                incident.unlogged += 1
                return None
            suppressed, incident.unlogged = incident.unlogged, 0
            incident.logged_ms = now
            return new_incident, suppressed
