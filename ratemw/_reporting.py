"""Telling people about decisions: hooks and logs. Generators, like the core they serve."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from ratemw._decision import Decision, denial_headers, problem_body
from ratemw._exceptions import RateLimitExceeded

if TYPE_CHECKING:
    from ratemw._limiter import Limiter

logger = logging.getLogger("ratemw")


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
