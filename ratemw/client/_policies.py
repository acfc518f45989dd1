"""From a response's rate-limit headers (and problem+json body) to ``Policy`` values.

Four header dialects are read, each as its specification writes it:

- draft-ietf-httpapi-ratelimit-headers-10 (and -11, -12, whose wire format is the same):
  ``RateLimit-Policy: "per-minute";q=5;w=60`` and ``RateLimit: "per-minute";r=0;t=17``,
  Structured Field Lists joined by policy name;
- draft-7: ``RateLimit: limit=5, remaining=0, reset=17`` (a Structured Field Dictionary) with
  ``RateLimit-Policy: 5;w=60``;
- draft-6: ``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset`` (delta seconds);
- legacy: ``X-RateLimit-Limit``, ``-Remaining``, ``-Reset`` as GitHub sends them (reset in epoch
  seconds; a value below 10^9 is taken as seconds from now, as some services send it) and
  ``X-RateLimit-Resource`` as the policy's name.

A header that does not parse is ignored as a whole (RFC 9651 section 4.2); a parameter whose
value is not a non-negative integer is ignored alone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import ratemw.client._sfv as _sfv
from ratemw.client._fields import Fields, HeadersLike, fields, json_object, number

__all__ = ["HEADERS", "Dialect", "Policy", "parse_rate_limit", "policies_from"]

Dialect = Literal["draft-10", "draft-7", "draft-6", "legacy", "problem"]

HEADERS = frozenset(
    {
        "ratelimit",
        "ratelimit-policy",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "x-ratelimit-resource",
        "retry-after",
    }
)
"""The (lower-case) headers a client reads."""

# X-RateLimit-Reset values from here on are epoch seconds (2001-09-09 onwards); below it,
# seconds from now. No service resets a quota 31 years ahead.
_EPOCH_FROM = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Policy:
    """One quota policy, as a response describes it.

    Any number the response did not give (or gave in a form that is not valid) is ``None``.

    Attributes:
        name: the policy's name (draft-10's item, the problem body's ``name``, GitHub's
            ``X-RateLimit-Resource``), or ``None`` for an unnamed quota.
        quota: requests (quota units) allowed per window.
        window: the window's length in seconds.
        remaining: what is left of the quota now.
        reset: seconds from the response until the quota has room again (draft-10's ``t``).
        dialect: where it was read: ``"draft-10"``, ``"draft-7"``, ``"draft-6"``,
            ``"legacy"`` or ``"problem"`` (the problem+json body).

    Example::

        Policy(name="per-minute", quota=5, window=60, remaining=0, reset=17.0,
               dialect="draft-10").exhausted   # True: wait 17 s before the next request
    """

    name: str | None
    quota: int | None
    window: int | None
    remaining: int | None
    reset: float | None
    dialect: Dialect

    @property
    def exhausted(self) -> bool:
        """Whether the response says nothing is left: the next request waits ``reset``."""
        return self.remaining == 0


def parse_rate_limit(
    headers: HeadersLike,
    body: bytes | str | Mapping[str, Any] | None = None,
    *,
    now: float | None = None,
) -> tuple[Policy, ...]:
    """The rate-limit policies a response describes, from its headers and optional body.

    Reads draft-10 ``RateLimit``/``RateLimit-Policy``, draft-7 ``RateLimit``, draft-6
    ``RateLimit-Limit/-Remaining/-Reset`` and GitHub-style ``X-RateLimit-*`` headers, and the
    ``policies`` of a problem+json body (ratemw's 429) for what the headers leave out. It never
    raises on what a server sent: invalid values are left out.

    Args:
        headers: the response's headers (``httpx.Headers``, ``requests``' headers, a
            ``dict``, or ``(name, value)`` pairs; names in any case).
        body: the response body (bytes, text, or already-decoded JSON), if any.
        now: the current time in epoch seconds, to turn ``X-RateLimit-Reset`` into seconds
            from now (default: ``time.time()``).

    Returns:
        The policies, draft-10 first, then draft-7, draft-6, legacy and the body's.

    Example::

        >>> [policy] = parse_rate_limit({
        ...     "RateLimit-Policy": '"per-minute";q=5;w=60',
        ...     "RateLimit": '"per-minute";r=0;t=17',
        ... })
        >>> policy.name, policy.quota, policy.window, policy.remaining, policy.reset
        ('per-minute', 5, 60, 0, 17.0)
    """
    return policies_from(fields(headers, HEADERS), json_object(body), now)


def policies_from(
    found: Fields, problem: dict[str, Any] | None, now: float | None = None
) -> tuple[Policy, ...]:
    """``parse_rate_limit`` on headers already collected by ``fields``."""
    if now is None:
        now = time.time()
    policies = [*_draft10(found), *_draft7(found), *_draft6(found), *_legacy(found, now)]
    return tuple(_with_problem(policies, problem))


# -- draft-10 ---------------------------------------------------------------------------------


def _count(value: object) -> int | None:
    """A parameter's value if it is a non-negative sf-integer (never a boolean)."""
    return value if type(value) is int and value >= 0 else None


def _named(text: str | None) -> list[tuple[str, dict[str, Any]]]:
    """The members of a draft-10 List that are named policies (Strings or Tokens)."""
    members = _sfv.parse_list(text) if text is not None else None
    return [
        (value, params)
        for value, params in members or []
        if isinstance(value, str) and not isinstance(value, _sfv.DisplayString)
    ]


def _joined(found: Fields, name: str) -> str | None:
    # RFC 9651 section 4.2: repeated lines of a List field are one List, joined by commas.
    values = found.get(name)
    return ", ".join(values) if values else None


def _draft10(found: Fields) -> list[Policy]:
    quotas: dict[str, tuple[int | None, int | None]] = {}
    for name, params in _named(_joined(found, "ratelimit-policy")):
        quotas.setdefault(name, (_count(params.get("q")), _count(params.get("w"))))
    states = _named(_joined(found, "ratelimit"))
    policies: list[Policy] = []
    for name in dict.fromkeys([*quotas, *(n for n, _ in states)]):
        quota, window = quotas.get(name, (None, None))
        mine = [params for n, params in states if n == name] or [{}]
        for params in mine:
            reset = _count(params.get("t"))
            policies.append(
                Policy(
                    name=str(name),
                    quota=quota,
                    window=window,
                    remaining=_count(params.get("r")),
                    reset=None if reset is None else float(reset),
                    dialect="draft-10",
                )
            )
    return policies


# -- draft-7 and draft-6 ----------------------------------------------------------------------


def _quota_items(text: str | None) -> list[tuple[int, int | None]]:
    """``(quota, window)`` of each integer member of a draft-6/7 ``RateLimit-Policy``."""
    members = _sfv.parse_list(text) if text is not None else None
    items: list[tuple[int, int | None]] = []
    for value, params in members or []:
        quota = _count(value)
        if quota is not None:
            items.append((quota, _count(params.get("w"))))
    return items


def _single(
    limit: int | None, remaining: int | None, reset: int | None, found: Fields, dialect: Dialect
) -> list[Policy]:
    """One unnamed policy with the quota items of ``RateLimit-Policy`` beside it."""
    if limit is None and remaining is None and reset is None:
        return []
    items = _quota_items(_joined(found, "ratelimit-policy"))
    window = next((w for q, w in items if q == limit), None)
    first = Policy(
        name=None,
        quota=limit,
        window=window,
        remaining=remaining,
        reset=None if reset is None else float(reset),
        dialect=dialect,
    )
    others = [(q, w) for q, w in items if (q, w) != (limit, window)]
    return [first] + [Policy(None, q, w, None, None, dialect) for q, w in dict.fromkeys(others)]


def _draft7(found: Fields) -> list[Policy]:
    text = _joined(found, "ratelimit")
    if text is None or _sfv.parse_list(text) is not None:
        return []  # absent, or a draft-10 List
    members = _sfv.parse_dictionary(text) or {}

    def member(key: str) -> int | None:
        value = members.get(key)
        return _count(value[0]) if value is not None else None

    return _single(member("limit"), member("remaining"), member("reset"), found, "draft-7")


def _sf_integer(found: Fields, name: str) -> int | None:
    """A draft-6 header's integer: every member of the (joined) List must agree."""
    text = _joined(found, name)
    members = _sfv.parse_list(text) if text is not None else None
    values = {_count(value) for value, _ in members or []}
    return values.pop() if len(values) == 1 else None


def _draft6(found: Fields) -> list[Policy]:
    limit_text = _joined(found, "ratelimit-limit")
    # Early drafts list the quota policies after the limit: "100, 100;w=60".
    limits = _sfv.parse_list(limit_text) if limit_text is not None else None
    limit = _count(limits[0][0]) if limits else None
    remaining = _sf_integer(found, "ratelimit-remaining")
    reset = _sf_integer(found, "ratelimit-reset")
    return _single(limit, remaining, reset, found, "draft-6")


# -- legacy X-RateLimit-* ---------------------------------------------------------------------


def _legacy(found: Fields, now: float) -> list[Policy]:
    limit = number(found.get("x-ratelimit-limit"))
    remaining = number(found.get("x-ratelimit-remaining"))
    reset = number(found.get("x-ratelimit-reset"), decimal=True)
    if limit is None and remaining is None and reset is None:
        return []
    if reset is not None and reset >= _EPOCH_FROM:
        reset = max(reset - now, 0.0)
    names = {value.strip() for value in found.get("x-ratelimit-resource", [])}
    name = names.pop() if len(names) == 1 else None
    return [
        Policy(
            name=name or None,
            quota=None if limit is None else int(limit),
            window=None,
            remaining=None if remaining is None else int(remaining),
            reset=reset,
            dialect="legacy",
        )
    ]


# -- the problem+json body --------------------------------------------------------------------


def _body_policy(entry: object) -> Policy | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        return None
    reset = _count(entry.get("reset"))
    return Policy(
        name=entry["name"],
        quota=_count(entry.get("quota")),
        window=_count(entry.get("window")),
        remaining=_count(entry.get("remaining")),
        reset=None if reset is None else float(reset),
        dialect="problem",
    )


def _with_problem(policies: list[Policy], problem: dict[str, Any] | None) -> list[Policy]:
    """``policies``, completed by the body's: what the headers left out, the body fills in."""
    entries = problem.get("policies") if problem is not None else None
    if not isinstance(entries, list):
        return policies
    for entry in entries:
        told = _body_policy(entry)
        if told is None:
            continue
        same = [i for i, p in enumerate(policies) if p.name == told.name]
        if not same:
            policies.append(told)
        for i in same:
            known = policies[i]
            policies[i] = replace(
                known,
                **{
                    key: getattr(told, key)
                    for key in ("quota", "window", "remaining", "reset")
                    if getattr(known, key) is None
                },
            )
    return policies
