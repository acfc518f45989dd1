"""The error a rate-limited client raises when it gives up.

It joins ratemw's tree (``ratemw.RatemwError``) beside the server side's errors::

    RatemwError
    ├── ...                  the server side's errors (see ratemw.errors)
    └── RateLimited          a client gave up on a 429: it says what the server said, and why
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from ratemw.client._policies import Policy
from ratemw.errors import RatemwError

__all__ = ["RateLimited", "refusal"]

_DETAIL_LIMIT = 500  # characters of the server's ``detail`` quoted in a message


class RateLimited(RatemwError):
    """A request was refused with 429 Too Many Requests, and the client did not retry it.

    Raised by ``RateLimitTransport``, ``AsyncRateLimitTransport`` and ``RateLimitAdapter``
    instead of returning the 429, once retrying is not allowed (a POST, a streamed body),
    would wait longer than ``max_wait``, was done ``max_retries`` times, or the server did not
    say when to come back. ``str(error)`` says all of it in one sentence.

    Attributes:
        status_code: the refusal's status, 429.
        method: the request's method.
        url: the request's URL without its query string or credentials.
        policies: every policy the response described (``parse_rate_limit``).
        violated: the policies that refused the request: those the problem body names in
            ``violated-policies``, or else those with nothing remaining.
        retry_after: seconds the server asked to wait (``Retry-After``, else the body's
            ``retry_after``, else the longest ``reset`` of an exhausted policy), or ``None``.
        problem: the problem+json body (RFC 9457) as a ``dict``, or ``None`` when the body
            was not JSON.
        reason: why the client did not retry, in words.
        response: the refused response object of the HTTP library (its body already read
            and closed; ``problem`` holds what it said).

    Example::

        try:
            client.get("/search")
        except RateLimited as refused:
            log.warning("over quota (%s), retry in %s s", refused.violated[0].name,
                        refused.retry_after)
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 429,
        method: str = "GET",
        url: str = "",
        policies: tuple[Policy, ...] = (),
        violated: tuple[Policy, ...] = (),
        retry_after: float | None = None,
        problem: dict[str, Any] | None = None,
        reason: str = "",
        response: Any = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.method = method
        self.url = url
        self.policies = policies
        self.violated = violated
        self.retry_after = retry_after
        self.problem = problem
        self.reason = reason
        self.response = response


# Tracebacks name it where users import it from.
RateLimited.__module__ = "ratemw.client"


def refusal(
    *,
    method: str,
    url: str,
    status: int,
    policies: tuple[Policy, ...],
    problem: dict[str, Any] | None,
    retry_after: float | None,
    reason: str,
    response: Any,
) -> RateLimited:
    """The ``RateLimited`` for a refusal a client gives up on, with its one-sentence message."""
    named = problem.get("violated-policies") if problem else None
    if isinstance(named, list) and named:
        violated = tuple(p for p in policies if p.name in named)
    else:
        violated = tuple(p for p in policies if p.exhausted)
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    text = f"{method} {url} was refused with {status} {phrase}"
    detail = problem.get("detail") if problem else None
    if isinstance(detail, str) and detail.strip():
        # The server's words, on one line, bounded: they end up in logs.
        shown = "".join(ch if ch.isprintable() else " " for ch in detail[:_DETAIL_LIMIT])
        text += f": {shown.strip()}"
        text += "" if text.endswith((".", "!", "?")) else "."
    else:
        if violated:
            text += ": over quota (" + "; ".join(_describe(p) for p in violated) + ")"
        text += "." if retry_after is None else f". Retry after {retry_after:g} s."
    return RateLimited(
        f"{text} Not retried: {reason}.",
        status_code=status, method=method, url=url, policies=policies, violated=violated,
        retry_after=retry_after, problem=problem, reason=reason, response=response,
    )  # fmt: skip


def _describe(policy: Policy) -> str:
    words = [f"policy {policy.name!r}" if policy.name else "quota"]
    if policy.quota is not None:
        per = f" per {policy.window} s" if policy.window is not None else ""
        words.append(f"{policy.quota}{per}")
    if policy.remaining is not None:
        words.append(f"{policy.remaining} left")
    return ", ".join(words)
