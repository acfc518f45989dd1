"""Limits counted from code (``Limiter.hit``, ``peek``): what a call is checked into, and
what it comes to.

A call from code takes the decision path as a request does: its limit becomes a limit group
(kept, so a hot call compiles once), its key an identity, and the engine decides it on a plan
that is never quiet, since the caller wants the numbers.
"""

from __future__ import annotations

from typing import Any

from ratemw._bounded import Bounded
from ratemw.engine import CODE, Caller, Engine, Outcome, Plan, caller_identity
from ratemw.engine.failures import CODE_COST, CODE_KEY, FailureLog
from ratemw.engine.settings import check_groups
from ratemw.errors import ConfigurationError, StorageError
from ratemw.policy.decision import Decision
from ratemw.policy.groups import LimitGroup, valid_cost, valid_identity, valid_limit
from ratemw.policy.limits import MAX_AMOUNT
from ratemw.policy.problems import UNAVAILABLE_RETRY_AFTER

__all__ = ["ADMITTED", "NOBODY", "CodeCalls", "decision_of_call"]

#: The identity of calls from code whose key names nobody: they share one bucket.
NOBODY = "ratemw:nobody"
_MAX_GROUPS = 1024
#: A call admitted without a limit asked (a disabled limiter, a storage failing open).
ADMITTED = Decision(True, (), None)


class CodeCalls:
    """A limiter's calls from code: their limit groups, kept by what they are made of."""

    def __init__(self, failures: FailureLog) -> None:
        self.failures = failures
        self.groups: Bounded[tuple[Any, ...], LimitGroup] = Bounded(_MAX_GROUPS)

    def prepare(
        self, engine: Engine, key: Any, limit: Any, scope: Any, cost: Any, request: Any
    ) -> tuple[Plan, Caller]:
        """The plan a call is decided on, and who it counts as."""
        identity = valid_identity(key)
        if identity is None:
            self.failures(CODE_KEY, CodeCalls.prepare, None, key)
            identity = NOBODY
        checked_cost = valid_cost(cost)
        if checked_cost is None:
            self.failures(CODE_COST, CodeCalls.prepare, None, cost)
            checked_cost = 1
        group = self.group(engine, limit, scope, checked_cost)
        # A refusal's detail names the request's method and path, when there is a request.
        method = getattr(request, "method", None)
        path = getattr(getattr(request, "url", None), "path", None) or getattr(
            request, "path", None
        )
        if not (isinstance(method, str) and isinstance(path, str)):
            method, path = CODE, group.bucket
        return engine.code_plan(group), Caller(identity, method, path, request)

    def group(self, engine: Engine, limit: Any, scope: Any, cost: int) -> LimitGroup:
        """The limit group of a call (``ConfigurationError`` for a limit or scope that is
        not one: those are the program's, not a caller's)."""
        parts = tuple(limit) if isinstance(limit, list | tuple) else limit
        signature = (parts, scope, cost)
        try:
            group = self.groups.get(signature)
        except TypeError:  # not hashable, so neither a limit nor a scope: refused below
            group = None
        if group is not None:
            return group
        text = valid_limit(limit)
        if text is None:
            raise ConfigurationError(
                f"invalid limit {limit!r}: expected a limit string such as '5/minute', or a "
                "list of them"
            )
        if scope is not None and (not isinstance(scope, str) or not scope):
            raise ConfigurationError(f"invalid scope {scope!r}: expected a name, or None")
        group = LimitGroup(
            kind="shared" if scope else "code",
            limit=text,
            bucket=scope or text,
            name_prefix=f"{scope}-" if scope else "",
            key=caller_identity,
            cost=min(cost, MAX_AMOUNT),
        )
        if any(quota.concurrent for quota in group.quotas or ()):
            raise ConfigurationError(
                f"limit {text!r} counts requests in flight, which a call from code is not: "
                "use a rate such as '5/minute'"
            )
        settings = engine.settings
        check_groups((group,), settings.strategy, settings.fallback_quotas)
        return self.groups.put(signature, group)


def decision_of_call(outcome: Outcome, raise_exceeded: bool) -> Decision:
    """What a call came to, as a ``Decision`` (or raised, when asked)."""
    if outcome.exceeded is not None:
        if raise_exceeded:
            raise outcome.exceeded
        return outcome.exceeded.decision
    if outcome.unavailable:
        if raise_exceeded:
            raise StorageError("the storage cannot be asked (failure_mode='deny')")
        return Decision(False, (), UNAVAILABLE_RETRY_AFTER, unavailable=True)
    # Admitted; with no decision when the storage failed and failure_mode lets it pass.
    return outcome.explain() or ADMITTED
