"""The problem+json documents ratemw answers with itself: the 429 and the 503. Free of I/O.

RFC 9457 bodies whose numbers are the decision's (``policy.decision``), and the headers
that go with them, shared by every adapter: a 429 from Flask or Django is byte for byte the
one an ASGI app sends.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ratemw.policy.decision import Decision
from ratemw.policy.headers import rate_limit_headers

if TYPE_CHECKING:
    from ratemw.errors import RateLimitExceeded

PROBLEM_TYPE = "https://iana.org/assignments/http-problem-types#quota-exceeded"
PROBLEM_TITLE = "Request cannot be satisfied as assigned quota has been exceeded"
UNAVAILABLE_TYPE = "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity"
UNAVAILABLE_RETRY_AFTER = 1


def _seconds(n: int) -> str:
    return "1 second" if n == 1 else f"{n} seconds"


def problem_detail(decision: Decision, method: str, path: str) -> str:
    binding = decision.binding
    assert binding is not None, "a refused request has a violated policy"
    where = f"{method} {path}" if method else path  # a call from code has no method
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
    # The policies that refused it: not one a request may go over (block=False).
    violated = [p for p in decision.policies if p.violated and p.enforced]
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


def exceeded_response(exc: RateLimitExceeded) -> tuple[int, list[tuple[str, str]], bytes]:
    body = encode_body(exc.body)
    return 429, [*exc.headers, ("Content-Length", str(len(body)))], body


def unavailable_response(path: str) -> tuple[int, list[tuple[str, str]], bytes]:
    body = encode_body(
        {
            "type": UNAVAILABLE_TYPE,
            "title": "Service capacity is temporarily reduced",
            "status": 503,
            "detail": "Rate limits cannot be checked right now; try again shortly.",
            "instance": path,
            "retry_after": UNAVAILABLE_RETRY_AFTER,
        }
    )
    headers = [
        ("Content-Type", "application/problem+json"),
        ("Cache-Control", "no-store"),
        ("Retry-After", str(UNAVAILABLE_RETRY_AFTER)),
        ("Content-Length", str(len(body))),
    ]
    return 503, headers, body
