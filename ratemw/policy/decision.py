"""The decision: from the storage's answer to what the caller sees. Free of I/O.

One computation yields every number: the ``RateLimit`` headers, ``Retry-After`` and the
problem+json body all read the same ``PolicyState``s, so they cannot disagree.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ratemw.policy.limits import Quota
from ratemw.storage._base import Usage

PROBLEM_TYPE = "https://iana.org/assignments/http-problem-types#quota-exceeded"
PROBLEM_TITLE = "Request cannot be satisfied as assigned quota has been exceeded"
HEADER_MODES = ("draft-10", "draft-7", "draft-6", "legacy")


def _ceil_seconds(ms: int) -> int:
    return -(-ms // 1000) if ms > 0 else 0


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
    longest wait over the violated policies in whole seconds (at least 1), or ``None`` when
    the request is allowed or can never be satisfied. ``shadow_violated`` names the shadow
    policies that would have refused it.
    """

    allowed: bool
    policies: tuple[PolicyState, ...]
    retry_after: int | None
    shadow_violated: tuple[PolicyState, ...] = ()

    @property
    def satisfiable(self) -> bool:
        return all(p.reset is not None for p in self.policies if p.violated)

    @property
    def binding(self) -> PolicyState | None:
        """The violated policy that sets ``Retry-After`` (the longest wait)."""
        violated = [p for p in self.policies if p.violated]
        if not violated:
            return None
        never = [p for p in violated if p.reset is None]
        if never:
            return never[0]
        return max(violated, key=lambda p: p.reset or 0)


def decide(
    quotas: Sequence[tuple[str, Quota, int, bool]], usages: Sequence[Usage]
) -> Decision:
    """Turn the storage's usages into a decision.

    ``quotas`` holds, per hit, the policy name, its quota, the request's cost and whether the
    policy is enforced (false in shadow mode).
    """
    policies: list[PolicyState] = []
    shadow_violated: list[PolicyState] = []
    blocked = False
    for (name, quota, cost, enforce), usage in zip(quotas, usages, strict=True):
        violated = not usage.fits
        if violated:
            reset = None if usage.wait_ms is None else max(1, _ceil_seconds(usage.wait_ms))
        else:
            reset = _ceil_seconds(usage.reset_ms)
        state = PolicyState(
            name=name,
            quota=quota.amount,
            window=quota.window,
            remaining=max(usage.remaining, 0),
            reset=reset,
            violated=violated,
            shadow=not enforce,
            text=quota.text,
            cost=1 if quota.concurrent else cost,
            unit="concurrent-requests" if quota.concurrent else "requests",
        )
        if not enforce:
            if violated:
                shadow_violated.append(state)
            continue
        blocked = blocked or violated
        policies.append(state)
    retry_after: int | None = None
    if blocked:
        waits = [p.reset for p in policies if p.violated]
        retry_after = None if None in waits else max(w for w in waits if w is not None)
    return Decision(
        allowed=not blocked,
        policies=tuple(policies),
        retry_after=retry_after,
        shadow_violated=tuple(shadow_violated),
    )


# -- headers ---------------------------------------------------------------------------------


def sf_string(value: str) -> str:
    """``value`` as a Structured Field String (printable ASCII; quotes, backslashes escaped)."""
    cleaned = "".join(ch for ch in value if " " <= ch <= "~")
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _closest(decision: Decision) -> PolicyState:
    """The single policy that old-style headers (one limit, one remaining) describe."""
    binding = decision.binding
    if binding is not None:
        return binding
    return min(decision.policies, key=lambda p: (p.remaining, -(p.reset or 0)))


def rate_limit_headers(decision: Decision, mode: str, now_s: int) -> list[tuple[str, str]]:
    """The ``RateLimit`` headers of ``mode`` for a decision (empty without policies)."""
    policies = decision.policies
    if not policies:
        return []
    if mode == "draft-10":
        policy = ", ".join(
            f"{sf_string(p.name)};q={p.quota}"
            + ("" if p.unit == "requests" else f";qu={sf_string(p.unit)}")
            + (f";w={p.window}" if p.window else "")
            for p in policies
        )
        state = ", ".join(
            f"{sf_string(p.name)};r={p.remaining};t={p.reset or 0}" for p in policies
        )
        return [("RateLimit-Policy", policy), ("RateLimit", state)]
    closest = _closest(decision)
    reset = closest.reset or 0
    if mode == "legacy":
        return [
            ("X-RateLimit-Limit", str(closest.quota)),
            ("X-RateLimit-Remaining", str(closest.remaining)),
            ("X-RateLimit-Reset", str(now_s + reset)),
        ]
    policy = ", ".join(f"{p.quota};w={p.window}" for p in policies)
    if mode == "draft-7":
        return [
            ("RateLimit", f"limit={closest.quota}, remaining={closest.remaining}, reset={reset}"),
            ("RateLimit-Policy", policy),
        ]
    return [  # draft-6
        ("RateLimit-Limit", str(closest.quota)),
        ("RateLimit-Remaining", str(closest.remaining)),
        ("RateLimit-Reset", str(reset)),
        ("RateLimit-Policy", policy),
    ]


# -- the 429 ---------------------------------------------------------------------------------


def _seconds(n: int) -> str:
    return "1 second" if n == 1 else f"{n} seconds"


def problem_detail(decision: Decision, method: str, path: str) -> str:
    binding = decision.binding
    assert binding is not None, "a refused request has a violated policy"
    where = f"{method} {path}"
    if decision.retry_after is None:
        return (
            f"Rate limit exceeded: this request costs {binding.cost} but the limit allows "
            f"{binding.text} on {where}, so it can never be satisfied."
        )
    return (
        f"Rate limit exceeded: {binding.text} on {where}. "
        f"Try again in {_seconds(decision.retry_after)}."
    )


def problem_body(
    decision: Decision, method: str, path: str, detail: str | None = None
) -> dict[str, Any]:
    """The problem+json document of a refusal; ``detail`` replaces the default sentence."""
    violated = [p for p in decision.policies if p.violated]
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE,
        "title": PROBLEM_TITLE,
        "status": 429,
        "detail": detail if detail is not None else problem_detail(decision, method, path),
        "instance": path,
        "violated-policies": [p.name for p in violated],
    }
    if decision.retry_after is not None:
        body["retry_after"] = decision.retry_after
    body["policies"] = [p.as_dict() for p in violated]
    return body


def denial_headers(decision: Decision, modes: Sequence[str], now_s: int) -> list[tuple[str, str]]:
    headers = [
        ("Content-Type", "application/problem+json"),
        ("Cache-Control", "no-store"),
    ]
    if decision.retry_after is not None:
        headers.append(("Retry-After", str(decision.retry_after)))
    for mode in modes:
        headers.extend(rate_limit_headers(decision, mode, now_s))
    return headers


def encode_body(body: dict[str, Any]) -> bytes:
    # A path that was not valid UTF-8 may reach us as lone surrogates: JSON escapes them.
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":")).encode("ascii")
