"""Telling people about decisions: the hooks, and the log line of a refusal. Generators,
like the decision path they serve (an async hook is yielded, for the driver to await)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Generator
from dataclasses import replace
from typing import Any

from ratemw.engine.failures import HOOK, FailureLog
from ratemw.engine.settings import Settings
from ratemw.errors import RateLimitExceeded
from ratemw.policy.decision import Decision
from ratemw.policy.problems import denial_headers, problem_body

__all__ = ["call_hook", "exceeded_for", "log_refusal", "near_limit", "shadow_breach"]

logger = logging.getLogger("ratemw")


def call_hook(failures: FailureLog, hook: Any, *args: Any) -> Generator[Any, Any, None]:
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
    settings: Settings, decision: Decision, method: str, path: str, detail: str | None = None
) -> RateLimitExceeded:
    """The ``RateLimitExceeded`` of a refusal: every number of the 429, in one object."""
    now_s = -(-settings.clock_ms() // 1000)  # rounded up: an epoch reset is never early
    return RateLimitExceeded(
        decision,
        method=method,
        path=path,
        headers=denial_headers(decision, settings.header_modes, now_s),
        body=problem_body(decision, method, path, detail),
    )


def log_refusal(exceeded: RateLimitExceeded, route: str) -> None:
    logger.info(
        "rate limit exceeded: %s",
        exceeded.detail,
        extra={
            "ratemw": {
                "event": "rate_limit_exceeded",
                "route": route,
                "method": exceeded.method,
                "policies": [p.name for p in exceeded.violated],
                "retry_after": exceeded.retry_after,
            }
        },
    )


def near_limit(
    settings: Settings, failures: FailureLog, request: Any, decision: Decision
) -> Generator[Any, Any, None]:
    """``on_near_limit`` once, when this request takes a policy's usage past the threshold."""
    if not decision.allowed:
        return
    for policy in decision.policies:
        threshold = max(1, -(-policy.quota * settings.near_limit_permille // 1000))
        used_after = policy.quota - policy.remaining
        if used_after - policy.cost < threshold <= used_after:
            yield from call_hook(failures, settings.on_near_limit, request, policy)


def shadow_breach(
    settings: Settings,
    failures: FailureLog,
    request: Any,
    decision: Decision,
    method: str,
    path: str,
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
    # What the shadow policies would have answered, had they been enforced.
    would = tuple(replace(p, enforced=True) for p in decision.shadow_violated)
    shadow = Decision(
        allowed=False, policies=would, retry_after=max((p.reset or 0) for p in would) or None
    )
    exceeded = exceeded_for(settings, shadow, method, path)
    exceeded.shadow = True
    yield from call_hook(failures, settings.on_breach, request, exceeded)
