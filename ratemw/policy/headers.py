"""The ``RateLimit`` header fields of every header mode. Free of I/O.

draft-ietf-httpapi-ratelimit-headers-10 (``RateLimit-Policy`` and ``RateLimit``, Structured
Field Lists of named policies) is the default; draft-7, draft-6 and the legacy
``X-RateLimit-*`` fields are there on request. Plans compile the parts known before a request
(``policy_item``, ``state_head``) with the same functions the decision's headers use, so the
two cannot drift apart.
"""

from __future__ import annotations

from ratemw.policy.decision import Decision, PolicyState

HEADER_MODES = ("draft-10", "draft-7", "draft-6", "legacy")


def sf_string(value: str) -> str:
    """``value`` as a Structured Field String (printable ASCII; quotes, backslashes escaped)."""
    cleaned = "".join(ch for ch in value if " " <= ch <= "~")
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def policy_item(name: str, quota: int, window: int, unit: str = "requests") -> str:
    """One policy of ``RateLimit-Policy``: ``"per-minute";q=5;w=60``."""
    item = f"{sf_string(name)};q={quota}"
    if unit != "requests":
        item += f";qu={sf_string(unit)}"
    return item + f";w={window}" if window else item


def state_head(name: str) -> str:
    """The start of a policy's ``RateLimit`` item, up to its numbers: ``"per-minute";r=``."""
    return sf_string(name) + ";r="


def state_item(head: str, remaining: int, reset: int) -> str:
    """One policy of ``RateLimit``: ``"per-minute";r=4;t=60``."""
    return f"{head}{remaining};t={reset}"


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
        policy = ", ".join(policy_item(p.name, p.quota, p.window, p.unit) for p in policies)
        state = ", ".join(
            state_item(state_head(p.name), p.remaining, p.reset or 0) for p in policies
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
