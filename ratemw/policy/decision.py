"""The decision: from the storage's usages to one ``PolicyState`` per policy. Free of I/O.

One computation yields every number: the ``RateLimit`` headers (``policy.headers``),
``Retry-After`` and the problem+json body (``policy.problems``) all read the same
``PolicyState``s, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ratemw.storage.base import Usage


def ceil_seconds(ms: int) -> int:
    """Milliseconds as whole seconds, rounded up (a wait told in seconds is never short)."""
    return -(-ms // 1000) if ms > 0 else 0


def admitted(usage: Usage) -> tuple[int, int]:
    """An admitted hit's numbers for the caller: units remaining, seconds to full restore
    (rounded up, as ``ceil_seconds``)."""
    remaining, reset_ms = usage.remaining, usage.reset_ms
    return (remaining if remaining > 0 else 0), (-(-reset_ms // 1000) if reset_ms > 0 else 0)


@dataclass(frozen=True, slots=True)
class PolicyState:
    """One policy's numbers for one request.

    ``reset`` is whole seconds, rounded up: for a violated policy, until it has room for this
    request again; otherwise until its quota is fully restored. ``reset`` is ``None`` for a
    violated policy whose quota can never hold this request's cost.
    """

    name: str
    quota: int
    window: int
    remaining: int
    reset: int | None
    violated: bool
    shadow: bool
    text: str
    cost: int
    unit: str = "requests"
    #: False for a limit that lets requests through when over (``block=False``).
    enforced: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "quota": self.quota,
            "unit": self.unit,
            "window": self.window,
            "remaining": self.remaining,
            "reset": self.reset,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one request.

    ``allowed`` is false only when an enforced policy has no room. ``retry_after`` is the
    longest wait over the enforced violated policies in whole seconds (at least 1), or
    ``None`` when the request is allowed or can never be satisfied. ``exceeded`` is true when
    any policy has no room: also when the request was let through by a limit declared with
    ``block=False``. ``shadow_violated`` names the shadow policies that would have refused
    it. ``unavailable``: the storage could not be asked (``failure_mode="deny"``).
    """

    allowed: bool
    policies: tuple[PolicyState, ...]
    retry_after: int | None
    shadow_violated: tuple[PolicyState, ...] = ()
    unavailable: bool = False

    @property
    def exceeded(self) -> bool:
        return any(p.violated for p in self.policies)

    @property
    def satisfiable(self) -> bool:
        return all(p.reset is not None for p in self.policies if p.violated and p.enforced)

    @property
    def binding(self) -> PolicyState | None:
        """The enforced violated policy that sets ``Retry-After`` (the longest wait)."""
        violated = [p for p in self.policies if p.violated and p.enforced]
        if not violated:
            return None
        never = [p for p in violated if p.reset is None]
        if never:
            return never[0]
        return max(violated, key=lambda p: p.reset or 0)


class QuotaNumbers(Protocol):
    """What a decision reads of a quota (``policy.limits.Quota``). Named by what it reads,
    so that the errors, which carry decisions, need nothing of limit parsing."""

    @property
    def amount(self) -> int: ...
    @property
    def window(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def concurrent(self) -> bool: ...


def decision_of(
    quotas: Sequence[tuple[str, QuotaNumbers, int, bool, bool]], usages: Sequence[Usage]
) -> Decision:
    """Turn the storage's usages into a decision.

    ``quotas`` holds, per hit, the policy name, its quota, the request's cost, whether the
    policy is enforced (refuses when over) and whether it is a shadow policy (reported
    apart, never in the headers).
    """
    policies: list[PolicyState] = []
    shadow_violated: list[PolicyState] = []
    blocked = False
    for (name, quota, cost, enforce, shadow), usage in zip(quotas, usages, strict=True):
        violated = not usage.fits
        reset: int | None
        if violated:
            remaining = max(usage.remaining, 0)
            reset = None if usage.wait_ms is None else max(1, ceil_seconds(usage.wait_ms))
        else:
            remaining, reset = admitted(usage)
        state = PolicyState(
            name=name,
            quota=quota.amount,
            window=quota.window,
            remaining=remaining,
            reset=reset,
            violated=violated,
            shadow=shadow,
            text=quota.text,
            cost=1 if quota.concurrent else cost,
            unit="concurrent-requests" if quota.concurrent else "requests",
            enforced=enforce,
        )
        if shadow:
            if violated:
                shadow_violated.append(state)
            continue
        blocked = blocked or (violated and enforce)
        policies.append(state)
    retry_after: int | None = None
    if blocked:
        waits = [p.reset for p in policies if p.violated and p.enforced]
        retry_after = None if None in waits else max(w for w in waits if w is not None)
    return Decision(
        allowed=not blocked,
        policies=tuple(policies),
        retry_after=retry_after,
        shadow_violated=tuple(shadow_violated),
    )
