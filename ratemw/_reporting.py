"""Telling people about decisions: hooks and logs. Generators, like the core they serve."""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from ratemw._decision import Decision, denial_headers, problem_body
from ratemw._exceptions import RateLimitExceeded

if TYPE_CHECKING:
    from ratemw._limiter import Limiter

logger = logging.getLogger("ratemw")

#: A key function failing again within this many milliseconds of its last failure belongs to
#: the same incident; and while an incident lasts, at most one line is logged this often.
KEY_FAILURE_INTERVAL_MS = 60_000
_MAX_KEY_FUNCTIONS = 256  # key functions are configured, not made per request: a safety cap


def call_hook(hook: Any, *args: Any) -> Generator[Any, Any, None]:
    """Run a user hook; a failing hook is logged and never breaks the request."""
    if hook is None:
        return
    try:
        result = hook(*args)
        if inspect.isawaitable(result):
            yield result
    except Exception:
        logger.exception("ratemw hook %r raised; the request goes on", hook)


def exceeded_for(
    limiter: Limiter, decision: Decision, method: str, path: str
) -> RateLimitExceeded:
    now_s = limiter.clock_ms() // 1000
    return RateLimitExceeded(
        decision,
        method=method,
        path=path,
        headers=denial_headers(decision, limiter.header_modes, now_s),
        body=problem_body(decision, method, path),
    )


def near_limit(limiter: Limiter, request: Any, decision: Decision) -> Generator[Any, Any, None]:
    """``on_near_limit`` once, when this request takes a policy's usage past the threshold."""
    if not decision.allowed:
        return
    for policy in decision.policies:
        threshold = max(1, -(-policy.quota * limiter.near_limit_ratio_permille // 1000))
        used_after = policy.quota - policy.remaining
        if used_after - policy.cost < threshold <= used_after:
            yield from call_hook(limiter.on_near_limit, request, policy)


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
    yield from call_hook(limiter.on_breach, request, exceeded)


class _Incident:
    """One key function's failures: when the last one happened, when a line was last logged."""

    __slots__ = ("last_ms", "logged_ms", "unlogged")

    def __init__(self) -> None:
        self.last_ms: float = float("-inf")
        self.logged_ms: float = float("-inf")
        self.unlogged = 0


class KeyFailureLog:
    """Logs key-function failures once per incident, not once per request.

    A caller who can make a key function raise could otherwise write a traceback to the log
    with every request. Per key function: the first failure of an incident is logged with its
    traceback; while failures go on, at most one line per ``interval_ms`` says how many were
    not logged since the previous line (with the latest error, without a traceback). An
    incident ends when ``interval_ms`` passes without a failure; the next one starts a new
    incident. Every line is a WARNING with ``record.ratemw = {"event":
    "key_function_failed", "key_function": ..., "suppressed": N}``.

    Args:
        clock: the time in milliseconds (the limiter's clock; monotonic by default).
        interval_ms: the incident gap and the shortest interval between two lines.
    """

    def __init__(
        self, clock: Callable[[], float], interval_ms: int = KEY_FAILURE_INTERVAL_MS
    ) -> None:
        self.clock = clock
        self.interval_ms = interval_ms
        self._incidents: dict[int, _Incident] = {}
        self._lock = threading.Lock()

    def __call__(self, key: Any, error: BaseException) -> None:
        """Record one failure of ``key`` and log it if it is due."""
        due = self._due(key)
        if due is None:
            return
        new_incident, suppressed = due
        fields = {"ratemw": {"event": "key_function_failed", "key_function": repr(key),
                             "suppressed": suppressed}}
        if new_incident:
            logger.warning(
                "key function %r raised; counting the request by client address%s",
                key,
                f" ({suppressed} earlier failures were not logged)" if suppressed else "",
                exc_info=error,
                extra=fields,
            )
        else:
            logger.warning(
                "key function %r is still raising: %d failures not logged since the last "
                "line, counted by client address; latest: %r",
                key,
                suppressed,
                error,
                extra=fields,
            )

    def _due(self, key: Any) -> tuple[bool, int] | None:
        """``None`` to stay quiet, else (whether an incident starts, failures not logged)."""
        now = self.clock()
        interval = self.interval_ms
        with self._lock:
            incident = self._incidents.get(id(key))
            if incident is None:
                if len(self._incidents) >= _MAX_KEY_FUNCTIONS:
                    self._incidents.clear()
                incident = self._incidents[id(key)] = _Incident()
            # A clock that went back (a wall clock) counts as time passed, never as silence.
            new_incident = not (0 <= now - incident.last_ms < interval)
            incident.last_ms = now
            if not new_incident and 0 <= now - incident.logged_ms < interval:
                incident.unlogged += 1
                return None
            suppressed, incident.unlogged = incident.unlogged, 0
            incident.logged_ms = now
            return new_incident, suppressed
